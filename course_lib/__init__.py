"""course_lib: the shared library of the LLM course (RNN -> attention -> transformer -> ViT ->
GPT -> instruction tuning -> RLHF). Notebooks import what earlier notebooks built from here."""
__version__ = "0.1.0"
