"""A generation request answered over ASGI: its JSON answer, or a stream of
server-sent events, from a `GenerationService` (`:generate`,
`:generate_stream`).

- `generation_answer(service, prompt, fields)`: waits (without holding a
  thread) for the request's answer;
- `stream_generation(service, prompt, fields)`: an `EventStream` sending
  one `token` event per new token, `{"token_id", "text"}`, then `done`
  with the answer;
- `EventStream(handle, events)`: the ASGI response (`text/event-stream`); a
  client that disconnects cancels `handle`, which frees its slot after the
  batcher's call in progress.
"""

import asyncio
import json


def _events_of(service, prompt, fields, stream):
    """Submits the request; returns `(handle, queue)`: the queue gets
    `("token", {...})` per token when `stream`, then `("done", handle)`,
    pushed from the batcher's thread into this event loop."""
    loop = asyncio.get_running_loop()
    events = asyncio.Queue()

    def push(kind, value):  # on the batcher's thread
        try:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))
        except RuntimeError:  # the loop has closed: nobody listens any more
            pass

    on_token = (lambda token, text: push("token", {"token_id": token, "text": text})
                ) if stream else None
    handle = service.submit(prompt, fields, on_token=on_token)
    handle.add_done_callback(lambda done: push("done", done))
    return handle, events


async def generation_answer(service, prompt, fields):
    """The JSON-ready answer of one request through the continuous batcher
    (`RequestError` from `service.submit` propagates)."""
    handle, events = _events_of(service, prompt, fields, stream=False)
    try:
        while True:
            kind, value = await events.get()
            if kind == "done":
                return service.answer(value)
    finally:
        handle.cancel()  # a no-op once done; frees the slot if the client left


def stream_generation(service, prompt, fields):
    """An `EventStream` of the request's tokens, then its answer."""
    handle, events = _events_of(service, prompt, fields, stream=True)
    return EventStream(handle, _token_events(events, service))


async def _token_events(events, service):
    """`("token", {"token_id", "text"})` per new token, with the text that
    token added, then `("done", answer)`."""
    while True:
        kind, value = await events.get()
        if kind == "done":
            yield "done", service.answer(value)
            return
        yield kind, value


class EventStream:
    """An ASGI response of server-sent events (`text/event-stream`): one
    `event: <kind>` / `data: <JSON>` block per event of `events` (an async
    iterator or a list). A client that disconnects cancels `handle`, which
    frees its slot after the batcher's call in progress."""

    def __init__(self, handle, events):
        self.handle, self.events = handle, events

    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                (b"cache-control", b"no-cache")]})
        events = self.events
        if isinstance(events, list):
            events = _as_async(events)
        disconnect = asyncio.ensure_future(_disconnected(receive))
        try:
            iterator = events.__aiter__()
            while True:
                following = asyncio.ensure_future(iterator.__anext__())
                await asyncio.wait([following, disconnect],
                                   return_when=asyncio.FIRST_COMPLETED)
                if not following.done():  # the client went away
                    following.cancel()
                    return
                try:
                    kind, payload = following.result()
                except StopAsyncIteration:
                    break
                data = json.dumps(payload, ensure_ascii=False)
                await send({"type": "http.response.body", "more_body": True,
                            "body": f"event: {kind}\ndata: {data}\n\n".encode("utf-8")})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the connection broke while sending
            return
        finally:
            disconnect.cancel()
            if self.handle is not None:
                self.handle.cancel()


async def _disconnected(receive):
    while (await receive())["type"] != "http.disconnect":
        pass


async def _as_async(items):
    for item in items:
        yield item
