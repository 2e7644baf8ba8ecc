"""VideoPoet: the data and the models behind a decoder-only video+audio language model.

The repository root is this package. Its sub-packages are the top-level folders:

    videopoet.pipelines   curation and pre-tokenization stages (Ray Data)
    videopoet.tokenizers  MAGVIT-v2 video/image, SoundStream audio, text encoders
    videopoet.model       the VideoPoet LM and super-resolution transformer (architecture only)
    videopoet.jobs        entry points (`videopoet <job>` or `python jobs/<job>.py`)
    videopoet.core        config, I/O, logging and Ray runtime helpers shared by the above

Why a module with `__path__` rather than a `videopoet/` folder: the folders must live at the top of the
repository, and `tokenizers/` there must not shadow Hugging Face's `tokenizers` (which `transformers`
imports). Our `tokenizers/` has no `__init__.py`, so a bare `import tokenizers` always resolves to the
installed regular package, while `videopoet.tokenizers` resolves here. This works from the repository
root, in pytest, in `python jobs/x.py`, in Ray workers of `ray job submit --working-dir .` (the working
dir is on their path) and from an installed wheel (where this file is `videopoet/__init__.py`).
"""

import os as _os

__version__ = "0.1.0"
__path__ = [_os.path.dirname(_os.path.abspath(__file__))]
