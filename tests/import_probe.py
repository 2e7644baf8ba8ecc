"""Report where `videopoet`, `transformers` and Hugging Face `tokenizers` are imported from.

    python tests/import_probe.py                                                # this process
    python tests/import_probe.py --ray                                          # + a Ray worker (local Ray)
    ray job submit --working-dir . -- python tests/import_probe.py --ray        # driver + worker on a cluster

Prints one line `IMPORT_PROBE {"driver": {...}, "worker": {...} or null, "ray_mode": ...}`.
tests/test_layout.py runs it in each way a job is launched and checks they all resolve the same packages.
It lives in a sub-folder on purpose: like `python jobs/x.py`, the script's folder (not the repository
root) is first on `sys.path`.
"""

from __future__ import annotations

import json
import sys


def where() -> dict[str, object]:
    # transformers first, so `tokenizers` is the module transformers itself imported.
    from transformers import PreTrainedTokenizerFast  # noqa: F401

    hf_tokenizers = sys.modules["tokenizers"]

    import tokenizers
    import transformers

    import videopoet
    import videopoet.core.config  # noqa: F401
    import videopoet.tokenizers

    return {
        "videopoet": videopoet.__path__[0],
        "videopoet.tokenizers": list(videopoet.tokenizers.__path__),
        "tokenizers": tokenizers.__file__,
        "tokenizers_via_transformers": hf_tokenizers.__file__,
        "tokenizers_is_hf": hasattr(tokenizers, "Tokenizer"),
        "transformers": transformers.__file__,
    }


def main(argv: list[str]) -> None:
    report: dict[str, object] = {"driver": where(), "worker": None, "ray_mode": None}
    if "--ray" in argv:
        import ray

        from videopoet.core.ray_runtime import ray_session

        with ray_session() as session:
            report["ray_mode"] = session.mode
            report["worker"] = ray.get(ray.remote(where).remote())
    print("IMPORT_PROBE " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
