"""Coverage-guided fuzz targets for the wire layer (gateway/thrift).

Each target in :mod:`fuzz.targets` is a plain function of one ``bytes`` input that raises
``AssertionError`` (or any unexpected exception) when an invariant breaks, so it runs
without atheris too: ``tests/test_fuzz_smoke.py`` drives every target over its seed corpus
(``fuzz/corpus/<target>/``, made by ``python -m fuzz.make_corpus``) plus random inputs, and
``make fuzz`` drives them with atheris (``python -m fuzz.run <target>``).
"""
