"""SavedModel export: text in, text out, loaded with TensorFlow alone; atomic versions."""

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from keras_transformer.data import tokenizers as tk
from keras_transformer.export import export_saved_model, versions
from keras_transformer.generation import Translator, greedy_translate
from tests.helpers import site_packages_without_keras

TEXTS = ["twenty-one books", "¿Dónde está el niño?", "", "seven plus five is twelve " * 40]


@pytest.fixture(scope="module")
def exported(translator, tmp_path_factory):
    base = tmp_path_factory.mktemp("saved_models") / "translator"
    path = export_saved_model(translator, str(base))
    return base, path


def test_translate_in_process_matches_the_uncached_reference(translator):
    greedy = Translator(translator.model, translator.source_tokenizer,
                        translator.target_tokenizer, max_length=16)
    source_ids = greedy.tokenize(tf.constant(TEXTS)).numpy()
    assert source_ids.shape == (4, 16)  # the long text is truncated to max_length
    ids = greedy.translate_ids(tf.constant(source_ids))["token_ids"].numpy()
    reference = greedy_translate(translator.model, source_ids, 16)
    reference = np.pad(reference, ((0, 0), (0, 16 - reference.shape[1])))
    reference[2] = 0  # the empty text translates to nothing, not to the model's guess
    np.testing.assert_array_equal(ids, reference)
    # Detokenized the same way as tokenizers.decode.
    text = [t.decode("utf-8") for t in greedy.translate(tf.constant(TEXTS))["translation"].numpy()]
    assert text == tk.decode(translator.target_tokenizer, ids)


def test_export_layout_assets_and_signatures(exported):
    base, path = exported
    assert path == os.path.join(str(base), "1") and versions(str(base)) == [1]
    assets = sorted(os.listdir(os.path.join(path, "assets")))
    assert "source_vocabulary.txt" in assets and "target_vocabulary.txt" in assets
    assert not [name for name in os.listdir(base) if name.startswith(".")]
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True,
                           text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for expected in ("signature_def['serving_default']", "signature_def['translate_ids']",
                     "['text'] tensor_info", "['translation'] tensor_info",
                     "['token_ids'] tensor_info", "['scores'] tensor_info",
                     "['source_ids'] tensor_info"):
        assert expected in shown.stdout, expected


def test_fresh_process_with_tensorflow_only_returns_the_same(translator, exported, tmp_path):
    _, path = exported
    in_process = translator.translate(tf.constant(TEXTS))
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        import tensorflow_text  # the WordPiece ops in the graph
        served = tf.saved_model.load({path!r})
        out = served.signatures["serving_default"](text=tf.constant({TEXTS!r}))
        ids = served.signatures["translate_ids"](
            source_ids=tf.constant([[5, 6, 7, 0]], tf.int32))["token_ids"]
        loaded = sorted(m for m in sys.modules
                        if m.split(".")[0] in ("keras_hub", "keras_transformer"))
        for name in ("keras_hub", "keras_transformer"):
            try:
                __import__(name)
                loaded.append(name + " is importable")
            except ImportError:
                pass
        print(json.dumps({{
            "translation": [t.decode("utf-8") for t in out["translation"].numpy()],
            "token_ids": out["token_ids"].numpy().tolist(),
            "scores": out["scores"].numpy().tolist(),
            "ids_shape": list(ids.shape), "loaded": loaded}}))
    """)
    packages = site_packages_without_keras(str(tmp_path))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": packages}
    # -S: no site-packages but the filtered copy; -I is not used because it
    # would drop PYTHONPATH too.
    result = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True,
                            text=True, timeout=300, env=env, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served["loaded"] == []
    assert served["translation"] == [t.decode("utf-8") for t in
                                     in_process["translation"].numpy()]
    assert served["token_ids"] == in_process["token_ids"].numpy().tolist()
    np.testing.assert_allclose(served["scores"], in_process["scores"].numpy(), atol=1e-5)
    assert served["ids_shape"] == [1, 16]


def test_versions_count_up_and_a_failed_export_leaves_nothing(translator, exported,
                                                              monkeypatch):
    base, _ = exported
    second = export_saved_model(translator, str(base))
    assert second.endswith(os.sep + "2") and versions(str(base)) == [1, 2]
    with pytest.raises(FileExistsError, match="Version 2 exists"):
        export_saved_model(translator, str(base), version=2)

    real_save = tf.saved_model.save

    def save_then_fail(obj, export_dir, signatures=None):
        real_save(obj, export_dir, signatures=signatures)  # a complete write...
        raise OSError(28, "No space left on device")  # ...then the disk fills up

    monkeypatch.setattr(tf.saved_model, "save", save_then_fail)
    with pytest.raises(OSError, match="No space left"):
        export_saved_model(translator, str(base))
    assert versions(str(base)) == [1, 2]
    assert sorted(os.listdir(base)) == ["1", "2"]  # no half-written version left behind
    assert os.path.exists(os.path.join(base, "2", "saved_model.pb"))


EXPORT = textwrap.dedent(
    """
    import sys
    from tests.helpers import make_translator
    from keras_transformer.export import export_saved_model
    translator = make_translator()
    print("exporting", flush=True)
    export_saved_model(translator, sys.argv[1])
    """
)


def _tree_digest(directory):
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(directory)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, directory).encode())
            with open(path, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


def _staging_files(base):
    return [os.path.join(root, name) for root, _, files in os.walk(base)
            if os.sep + ".incomplete-" in root for name in files]


def test_an_export_killed_midway_leaves_the_previous_version_and_nothing_loadable(
        translator, tmp_path):
    base = tmp_path / "translator"
    export_saved_model(translator, str(base))
    before = _tree_digest(base / "1")
    # SIGKILL while the SavedModel is being written: once its vocabulary
    # assets are there, then once TensorFlow has begun writing the model.
    kill_points = [lambda files: len(files) > 0,
                   lambda files: any(os.sep + "model" + os.sep in f for f in files)]
    for kill_when in kill_points:
        process = subprocess.Popen(
            [sys.executable, "-c", EXPORT, str(base)], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        try:
            deadline, killed = time.time() + 240, False
            while time.time() < deadline and process.poll() is None:
                if kill_when(_staging_files(base)):
                    process.send_signal(signal.SIGKILL)
                    killed = True
                    break
                time.sleep(0.005)
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert killed, "the export finished before the kill point"
        # What TF Serving would see: version 1 only, byte for byte as it was.
        assert versions(str(base)) == [1]
        assert [n for n in os.listdir(base) if not n.startswith(".")] == ["1"]
        assert _tree_digest(base / "1") == before
        # The killed export's staging stays, hidden; the next export's start
        # removed the one before it.
        assert len([n for n in os.listdir(base) if n.startswith(".incomplete-")]) == 1
    # The next export removes it and writes version 2.
    assert export_saved_model(translator, str(base)).endswith(os.sep + "2")
    assert sorted(os.listdir(base)) == ["1", "2"]
    served = tf.saved_model.load(str(base / "2"))
    assert served.signatures["serving_default"](text=tf.constant(["one book"]))["translation"].shape == [1]


def test_only_staging_of_gone_processes_of_this_host_is_removed(tmp_path):
    import socket

    from keras_transformer.export import remove_abandoned_staging

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    host = socket.gethostname()
    names = {"gone": f".incomplete-3-{host}-{finished.stdout.strip()}-a1b2",
             "alive": f".incomplete-3-{host}-{os.getpid()}-c3d4",  # an export in progress
             "elsewhere": f".incomplete-3-other-host-{finished.stdout.strip()}-e5f6"}
    for name in names.values():
        (tmp_path / name).mkdir()
    (tmp_path / "1").mkdir()
    assert remove_abandoned_staging(str(tmp_path)) == [names["gone"]]
    assert sorted(os.listdir(tmp_path)) == sorted(["1", names["alive"], names["elsewhere"]])


def test_a_real_full_disk_fails_cleanly_and_keeps_the_previous_version(translator, tmp_path):
    """A tmpfs big enough for one export, not two (needs mount rights: root)."""
    size = int(subprocess.check_output(
        ["du", "-sb", export_saved_model(translator, str(tmp_path / "sized"))]).split()[0])
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size * 3 // 2}", "tmpfs",
                              str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        base = disk / "translator"
        export_saved_model(translator, str(base))
        before, free = _tree_digest(base / "1"), shutil.disk_usage(disk).free
        with pytest.raises(OSError, match=r"No space left .* version 2 .* unchanged: \[1\]") as info:
            export_saved_model(translator, str(base))
        assert info.value.errno == errno.ENOSPC
        assert sorted(os.listdir(base)) == ["1"]  # no version 2, no staging left
        assert _tree_digest(base / "1") == before
        assert shutil.disk_usage(disk).free == free  # the partial write was removed
        served = tf.saved_model.load(str(base / "1"))
        assert served.signatures["serving_default"](text=tf.constant(["one book"]))["translation"].shape == [1]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_attention_weights_and_pictures(translator, tmp_path):
    from keras_transformer.evaluation import plots

    source, output, weights = plots.cross_attention(translator, "twenty-one books")
    assert weights.shape == (2, len(output), len(source))
    # Each output piece's attention over the real source pieces sums to 1.
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    path = plots.plot_attention(translator, "twenty-one books", str(tmp_path / "a.png"))
    curves = plots.plot_history({"loss": [2.0, 1.0], "val_loss": [2.1, 1.2]},
                                str(tmp_path / "c.png"))
    for png in (path, curves):
        with open(png, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_corrupted_checkpoint_gives_an_error_naming_it(tmp_path):
    from keras_transformer.generation import load_translator

    run = tmp_path / "run"
    for name in ("source_vocabulary", "target_vocabulary"):
        (run / name).mkdir(parents=True)
    (run / "config.json").write_text('{"max_length": 16}')
    (run / "best.keras").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="Could not load the checkpoint .*best.keras"):
        load_translator(str(run))
    with pytest.raises(FileNotFoundError, match="missing"):
        load_translator(str(tmp_path))


def test_served_model_takes_awkward_input_without_crashing(exported):
    import time

    _, path = exported
    serve = tf.saved_model.load(path).signatures["serving_default"]
    awkward = tf.constant([b"", b"\xff\xfe not utf-8 \xc3", "ñ" * 10_000, "ok", " \t\n "])
    out = serve(text=awkward)
    assert out["translation"].shape == (5,) and out["token_ids"].shape == (5, 16)
    for empty_row in (0, 4):  # no source token: an empty translation, no tokens, score 0
        assert out["translation"][empty_row].numpy() == b""
        assert not out["token_ids"][empty_row].numpy().any()
        assert out["scores"][empty_row].numpy() == 0.0
    empty = serve(text=tf.constant([], tf.string))
    assert empty["translation"].shape == (0,) and empty["token_ids"].shape[0] == 0
    started = time.time()
    many = serve(text=tf.constant(["seven plus five is twelve"] * 1000))
    assert many["translation"].shape == (1000,)
    assert len(set(many["translation"].numpy().tolist())) == 1  # same input, same output
    assert time.time() - started < 120
