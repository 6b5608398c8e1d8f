"""A real chat template end to end (slow tier): dvc repro with a local Qwen2-shaped model folder."""
import json
import shutil
from rlhf import models
from tests.unit.test_templates import FAMILIES, family_folder


def test_dvc_repro_with_a_local_qwen2_model(tmp_path):
    """`dvc repro` through evaluate with model.name set to a local Qwen2-architecture folder carrying Qwen2.5's
    published template: the base stage records the folder, the data is tokenized with the default system prompt,
    the prompts end with the generation prompt, the answers with <|im_end|>, and evaluate runs. Catches a pipeline
    that only works with the built-in tiny model (its Llama class, its tokenizer, its template)."""
    from tests.conftest import REPO, TINY, write_params
    from tests.slow.test_pipeline import COPY, ran, sh

    folder = family_folder(FAMILIES["qwen2_5"], tmp_path / "qwen2-tiny")
    root = tmp_path / "repo"
    for name in COPY:
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copy(src, dst))
    write_params(root / "params.yaml", TINY | {"model.name": str(folder), "eval.num_prompts": 8,
                                               "eval.max_new_tokens": 8, "eval.num_samples": 4})
    sh(root, "git", "init", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert ran(sh(root, "dvc", "repro")) == ["check", "fetch", "prepare", "base", "tokenize", "sft", "reward",
                                             "reference", "sft_answers", "align", "evaluate", "export"]
    weights = json.loads((root / "models/base/base.json").read_text())["weights"]
    assert weights["kind"] == "local" and weights["path"] == str(folder.resolve())
    from datasets import load_from_disk

    tok = models.tokenizer(root / "models/base")
    row = load_from_disk(str(root / "data/tokenized"))["train"][0]
    assert tok.decode(row["prompt_ids"]).startswith(FAMILIES["qwen2_5"].prompt_start)
    assert tok.decode(row["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert tok.decode(row["chosen_ids"]).endswith("<|im_end|>\n")
    metrics = json.loads((root / "metrics/eval.json").read_text())
    assert 0 < metrics["length_policy"] <= 8 and "kl_policy_sft" in metrics
    # the exported model stops at Qwen's end of turn, and its card names the local base folder and its fingerprint
    stops = json.loads((root / "models/export/generation_config.json").read_text())["eos_token_id"]
    assert tok.convert_tokens_to_ids("<|im_end|>") in (stops if isinstance(stops, list) else [stops])
    assert weights["fingerprint"] in (root / "models/export/README.md").read_text()
