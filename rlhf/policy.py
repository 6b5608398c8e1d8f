"""Where every alignment method starts: the SFT model (base weights with the SFT adapter merged in), to which the
method adds a new LoRA adapter. With the new adapter disabled, the same model is the SFT reference, so no second
full copy is loaded."""
from rlhf import train


def load_sft_merged(base_dir, sft_dir, cfg):
    """The SFT model as plain weights: base + SFT adapter, merged. With model.quantization set, the merge goes into
    the k-bit weights (PEFT dequantizes, adds and requantizes), which rounds the SFT delta."""
    from peft import PeftModel

    model = train.load_model(base_dir, cfg)
    return PeftModel.from_pretrained(model, sft_dir).merge_and_unload()


def load_policy(base_dir, sft_dir, policy_dir, cfg):
    """A trained policy: the SFT model with the align stage's adapter on top."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_sft_merged(base_dir, sft_dir, cfg), policy_dir).eval()
