"""The decorator that tests apply to every depthcurse function through jaxtyping's import hook.

`is_pep484_tower` lets an int pass where a float is annotated, as PEP 484 says.
"""

from beartype import BeartypeConf, beartype

typechecker = beartype(conf=BeartypeConf(is_pep484_tower=True))
