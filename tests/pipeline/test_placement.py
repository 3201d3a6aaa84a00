"""Memory plans: where components wait and where they run."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ideogram_app.pipeline.layer_streaming import StreamPlan
from ideogram_app.pipeline.placement import MEMORY_MODES, PLANS, MemoryPlan, OffloadPlan, check_memory_mode

ROOT = Path(__file__).resolve().parents[2]


def test_plans_place_components_by_mode():
    cpu = MemoryPlan.create("cpu", "cuda")
    assert (cpu.mode, repr(cpu)) == ("cpu", "CpuPlan(mode='cpu', device=cpu, storage=cpu)")
    assert cpu.device == cpu.storage_device == torch.device("cpu")
    full = MemoryPlan.create("full", "cuda:0")
    assert full.device == full.storage_device == torch.device("cuda:0")
    offload = MemoryPlan.create("offload", "cuda")
    assert (offload.device, offload.storage_device) == (torch.device("cuda"), torch.device("cpu"))
    stream = MemoryPlan.create("stream", "cuda")
    assert isinstance(stream, StreamPlan) and isinstance(stream, OffloadPlan)
    assert (stream.device, stream.storage_device) == (torch.device("cuda"), torch.device("cpu"))
    with pytest.raises(ValueError, match="memory mode 'tiny' is unknown; choose one of full, offload, cpu, stream$"):
        MemoryPlan.create("tiny")


def test_check_memory_mode_is_the_one_rule_and_knows_every_plan():
    assert tuple(PLANS) == MEMORY_MODES == ("full", "offload", "cpu", "stream")
    assert all(PLANS[mode].mode == mode and check_memory_mode(mode) == mode for mode in MEMORY_MODES)
    with pytest.raises(ValueError, match="memory mode 'Stream' is unknown"):
        check_memory_mode("Stream")


@pytest.mark.parametrize("first", ["placement", "layer_streaming", "estimate"])
def test_the_stream_plan_is_registered_whichever_module_is_imported_first(first):
    """placement.py and layer_streaming.py import each other (the plan subclasses OffloadPlan); a fresh
    interpreter proves neither order breaks the registry."""
    code = (f"import ideogram_app.pipeline.{first}\n"
            "from ideogram_app.pipeline.placement import MEMORY_MODES, PLANS, MemoryPlan\n"
            "assert tuple(PLANS) == MEMORY_MODES and type(MemoryPlan.create('stream', 'cpu')).__name__ == 'StreamPlan'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_running_is_a_no_op_when_storage_is_the_device():
    layer = torch.nn.Linear(2, 2)
    with MemoryPlan.create("cpu").running(layer) as active:
        assert active is layer and layer.weight.device.type == "cpu"


def test_offload_gives_a_device_copy_and_restores_the_stored_weights():
    """The meta device stands in for a GPU here: the module must really sit there inside the block
    (forward runs on meta tensors) and get back its very own CPU tensors afterwards (no copy back)."""
    plan = OffloadPlan(torch.device("meta"), torch.device("cpu"))
    layer = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    pointers = [t.data_ptr() for t in (*layer.parameters(), *layer.buffers())]
    with plan.running(layer) as active:
        assert {t.device.type for t in (*active.parameters(), *active.buffers())} == {"meta"}
        assert active(torch.empty(2, 3, device="meta")).shape == (2, 4)
    assert {t.device.type for t in (*layer.parameters(), *layer.buffers())} == {"cpu"}
    assert [t.data_ptr() for t in (*layer.parameters(), *layer.buffers())] == pointers
