"""A built-in English→Spanish corpus: numbers, counts, sums and dates in words.

The package makes these sentence pairs itself, deterministically from a seed,
so that the main example and the tests train a translation model offline.
The Spanish follows the rules a model has to learn: `veintiuno` but
`veintiún libros`, `cien` but `ciento uno`, `mil` but `veintiún mil`, `y`
between tens and units, accents (`dieciséis`, `veintitrés`), and
`el primero de mayo` for the first day of a month.

>>> english_number(21), spanish_number(21), spanish_number(21, before_noun=True)
('twenty one', 'veintiuno', 'veintiún')
>>> spanish_number(1_999)
'mil novecientos noventa y nueve'
>>> generate_pairs(2, seed=0) == generate_pairs(2, seed=0)
True
"""

import random

_EN_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_EN_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_ES_ONES = (
    "cero uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce "
    "quince dieciséis diecisiete dieciocho diecinueve veinte veintiuno veintidós "
    "veintitrés veinticuatro veinticinco veintiséis veintisiete veintiocho veintinueve"
).split()
_ES_TENS = "treinta cuarenta cincuenta sesenta setenta ochenta noventa".split()
_ES_HUNDREDS = (
    "ciento doscientos trescientos cuatrocientos quinientos seiscientos setecientos "
    "ochocientos novecientos"
).split()
_MONTHS = [
    ("January", "enero"), ("February", "febrero"), ("March", "marzo"), ("April", "abril"),
    ("May", "mayo"), ("June", "junio"), ("July", "julio"), ("August", "agosto"),
    ("September", "septiembre"), ("October", "octubre"), ("November", "noviembre"),
    ("December", "diciembre"),
]
_DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
_EN_ORDINALS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
    "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth"
).split()
# (English singular, English plural, Spanish singular, Spanish plural); all masculine.
_NOUNS = [
    ("book", "books", "libro", "libros"), ("cat", "cats", "gato", "gatos"),
    ("dog", "dogs", "perro", "perros"), ("tree", "trees", "árbol", "árboles"),
    ("car", "cars", "coche", "coches"), ("boy", "boys", "niño", "niños"),
]


def english_number(n):
    """0 ≤ n < 1,000,000 in English words, without "and": 342 → "three hundred forty two"."""
    _check_range(n)
    if n < 20:
        return _EN_ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _EN_TENS[tens - 2] + ("" if ones == 0 else " " + _EN_ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _EN_ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + english_number(rest))
    thousands, rest = divmod(n, 1000)
    words = english_number(thousands) + " thousand"
    return words if rest == 0 else words + " " + english_number(rest)


def spanish_number(n, before_noun=False):
    """0 ≤ n < 1,000,000 in Spanish words.

    `before_noun=True` gives the apocopated form used before a masculine noun:
    `uno` → `un`, `veintiuno` → `veintiún`, `treinta y uno` → `treinta y un`.
    """
    _check_range(n)
    if n < 30:
        words = _ES_ONES[n]
    elif n < 100:
        tens, ones = divmod(n, 10)
        words = _ES_TENS[tens - 3] + ("" if ones == 0 else " y " + _ES_ONES[ones])
    elif n == 100:
        words = "cien"
    elif n < 1000:
        hundreds, rest = divmod(n, 100)
        words = _ES_HUNDREDS[hundreds - 1]
        if rest:
            return words + " " + spanish_number(rest, before_noun)
    else:
        thousands, rest = divmod(n, 1000)
        words = "mil" if thousands == 1 else spanish_number(thousands, before_noun=True) + " mil"
        if rest:
            return words + " " + spanish_number(rest, before_noun)
    if before_noun:
        if words.endswith("veintiuno"):
            words = words[: -len("veintiuno")] + "veintiún"
        elif words.endswith("uno"):
            words = words[:-1]
    return words


def _check_range(n):
    if not isinstance(n, int) or not 0 <= n < 1_000_000:
        raise ValueError(f"Only whole numbers from 0 to 999,999 are written out. Received: {n!r}")


def _draw(rng, low, high):
    """A whole number in `[low, high)`; a quarter of them round.

    Uniform draws are almost never round (300 is one number in 1,900 of
    `[100, 2000)`), yet round numbers are the ones people write most, and a
    model that never saw `trescientos árboles` loops on it. So one draw in four
    keeps only its leading one or two digits (`347 → 300` or `340`).
    """
    n = rng.randrange(low, high)
    if n >= 10 and rng.random() < 0.25:
        unit = 10 ** (len(str(n)) - rng.choice([1, 2]))
        n = max(low, n - n % unit)
    return n


def _number_pair(rng):
    n = rng.choice([_draw(rng, 0, 100), _draw(rng, 100, 1000), _draw(rng, 1000, 100000)])
    return english_number(n), spanish_number(n)


def _count_pair(rng):
    english_one, english_many, spanish_one, spanish_many = rng.choice(_NOUNS)
    n = rng.choice([1, _draw(rng, 2, 100), _draw(rng, 100, 2000)])
    if n == 1:
        return f"I have one {english_one}.", f"Tengo un {spanish_one}."
    return (
        f"I have {english_number(n)} {english_many}.",
        f"Tengo {spanish_number(n, before_noun=True)} {spanish_many}.",
    )


def _sum_pair(rng):
    a, b = _draw(rng, 0, 500), _draw(rng, 0, 500)
    return (
        f"{english_number(a)} plus {english_number(b)} is {english_number(a + b)}.",
        f"{spanish_number(a)} más {spanish_number(b)} son {spanish_number(a + b)}.",
    )


def _date_pair(rng):
    month = rng.randrange(12)
    day = rng.randrange(1, _DAYS_IN_MONTH[month] + 1)
    english_month, spanish_month = _MONTHS[month]
    if day <= 20:
        english_day = _EN_ORDINALS[day - 1]
    else:  # twenty first, thirty first, ...
        tens, ones = divmod(day, 10)
        english_day = _EN_TENS[tens - 2] + ("th" if ones == 0 else " " + _EN_ORDINALS[ones - 1])
        english_day = english_day.replace("twentyth", "twentieth").replace("thirtyth", "thirtieth")
    spanish_day = "primero" if day == 1 else spanish_number(day)
    year = rng.randrange(1900, 2100)
    return (
        f"the {english_day} of {english_month} {english_number(year)}",
        f"el {spanish_day} de {spanish_month} de {spanish_number(year)}",
    )


_TEMPLATES = (_number_pair, _count_pair, _sum_pair, _date_pair)


def generate_pairs(count, seed=0):
    """`count` (English, Spanish) sentence pairs, the same for the same seed."""
    rng = random.Random(seed)
    return [rng.choice(_TEMPLATES)(rng) for _ in range(count)]
