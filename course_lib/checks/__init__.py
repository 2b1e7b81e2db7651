"""Exercise checkers: ``checks.<exercise>(your_function)`` prints a verdict and returns it.

Each topic has its own module; all checkers are importable from here.
"""
from ._core import CheckFailed, Verdict, checker, expect, expect_close, expect_tensor  # noqa: F401
from .attention import *  # noqa: F401,F403
from .basics import *  # noqa: F401,F403
from .gpt import *  # noqa: F401,F403
from .instruct import *  # noqa: F401,F403
from .multimodal import *  # noqa: F401,F403
from .rlhf import *  # noqa: F401,F403
from .rnn import *  # noqa: F401,F403
from .seq2seq import *  # noqa: F401,F403
from .transformer import *  # noqa: F401,F403
from .vit import *  # noqa: F401,F403
