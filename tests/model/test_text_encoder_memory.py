"""Host memory while loading the text encoder: bounded by ~1.5x the loaded weights (issue 3)."""

import json
import subprocess
import sys
from pathlib import Path

from tests.fixtures.tiny_text_encoder import write_tiny_text_encoder, write_tiny_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]

# One fresh process. Tiny warm-up loads pay the one-time costs (lazy imports, kernel registration);
# then, for each measured load, freed memory is handed back to the OS, the peak RSS (VmHWM) is reset,
# and the load's growth above the starting RSS is recorded.
PROBE = r"""
import ctypes, gc, json, sys, torch
from ideogram_app.model.text_encoder import load_text_encoder

def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

runs = json.loads(sys.argv[1])
for run in runs:
    load_text_encoder(run["warm_up"], dtype=torch.bfloat16, fp8=run["mode"])
results = []
for run in runs:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base, reset = status_kb("VmRSS"), status_kb("VmHWM")
    encoder = load_text_encoder(run["path"], dtype=torch.bfloat16, fp8=run["mode"])
    weights = sum(t.numel() * t.element_size() for t in encoder.state_dict().values())
    results.append({"base_kb": base, "reset_kb": reset, "peak_kb": status_kb("VmHWM"),
                    "after_kb": status_kb("VmRSS"), "weight_bytes": weights})
    del encoder
print(json.dumps(results))
"""

# 36 layers of hidden 256: about 35 M text parameters (71 MB in bf16).
MEMORY_SIZES = dict(
    hidden_size=256,
    intermediate_size=1024,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [16, 8, 8]},
)


def test_loading_holds_at_most_1_5x_the_weights_in_host_memory(tmp_path):
    runs = []
    for layout, mode in (("bf16", "dequantize"), ("fp8", "dequantize"), ("fp8", "keep")):
        big, tiny = tmp_path / f"{layout}_big", tmp_path / f"{layout}_tiny"
        if not big.exists():
            for root, sizes in ((big, MEMORY_SIZES), (tiny, {})):
                write_tiny_text_encoder(root, layout=layout, **sizes)
                write_tiny_tokenizer(root)
        runs.append({"layout": layout, "mode": mode, "path": str(big), "warm_up": str(tiny)})
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(runs)], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    results = json.loads(out.stdout.strip().splitlines()[-1])
    # Measured: growth / weights = 1.01 (bf16), 1.03 (fp8 -> bf16), 1.03 (fp8 kept).
    for run, m in zip(runs, results):
        label = (run["layout"], run["mode"], m)
        assert m["reset_kb"] - m["base_kb"] < 1024, ("the peak reset did not work", label)
        assert m["weight_bytes"] > 30e6
        assert (m["after_kb"] - m["base_kb"]) * 1024 >= 0.9 * m["weight_bytes"], label  # weights really loaded
        assert (m["peak_kb"] - m["base_kb"]) * 1024 <= 1.5 * m["weight_bytes"], label
