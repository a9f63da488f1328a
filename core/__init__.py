"""The ground floor: the vocabulary every other package shares, importing nothing of ours.

Typed errors (:mod:`core.errors`), model specs, identities and loading (:mod:`core.models`),
the two towers' encoders (:mod:`core.encode`), image decoding rules (:mod:`core.decode`), image
URIs (:mod:`core.uris`) and crash points for tests (:mod:`core.faults`).
"""
