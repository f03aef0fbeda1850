"""One way to say that a public name is deprecated: a `DeprecationWarning`
that names the replacement. Deprecated names keep working."""

import warnings


def warn(old, new, stacklevel=3):
    """Warns that `old` is deprecated in favour of `new` (both as the user writes them)."""
    warnings.warn(f"`{old}` is deprecated; use `{new}` instead. It will be removed in a "
                  "future version.", DeprecationWarning, stacklevel=stacklevel)
