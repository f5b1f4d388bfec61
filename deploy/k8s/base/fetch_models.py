"""Download models into the shared Hugging Face cache (HF_HOME), for services that run
offline (HF_HUB_OFFLINE=1, no egress). REGEN_FETCH_MODELS: space-separated repo ids, each
optionally `@revision`. Fetches what the services load: safetensors rather than .bin when a
repo has both, and for a diffusers pipeline (model_index.json) not the single-file
checkpoints some repos keep beside it. The hub token, if any, is a mounted file (HF_TOKEN_PATH)."""

import os
import sys

from huggingface_hub import HfApi, snapshot_download

SKIP = (".ckpt", ".pt", ".pth", ".onnx", ".onnx_data", ".msgpack", ".h5", ".ot", ".tflite", ".gguf", ".mlmodel")


def wanted(files: list[str]) -> list[str]:
    has_safetensors = any(f.endswith(".safetensors") for f in files)
    pipeline = "model_index.json" in files
    keep = []
    for name in files:
        if name.endswith(SKIP) or (has_safetensors and name.endswith(".bin")):
            continue
        if pipeline and "/" not in name and name.endswith((".safetensors", ".bin")):
            continue  # a single-file checkpoint beside the diffusers pipeline
        keep.append(name)
    return keep


def main() -> int:
    specs = os.environ.get("REGEN_FETCH_MODELS", "").split()
    if not specs:
        print("REGEN_FETCH_MODELS names no model", file=sys.stderr)
        return 2
    api = HfApi()
    for spec in specs:
        repo, _, revision = spec.partition("@")
        files = wanted(api.list_repo_files(repo, revision=revision or None))
        path = snapshot_download(repo, revision=revision or None, allow_patterns=files)
        print(f"fetched {repo}{'@' + revision if revision else ''}: {len(files)} files in {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
