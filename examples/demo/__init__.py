"""The PART demo: a multilingual speech corpus synthesised locally (`build_corpus`) and the scripts using it."""

__all__ = ["build_corpus"]


def __getattr__(name: str):
    # Lazy, so that `python -m examples.demo.corpus` does not import the module twice.
    if name == "build_corpus":
        from examples.demo.corpus import build_corpus

        return build_corpus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
