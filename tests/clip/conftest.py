"""One tiny open_clip model per session: saved with torch.save, converted once by the CLI."""
import pytest
import torch

from tests.clip import tiny
from tests.helpers import convert_in_process


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """(open_clip model, its state-dict file, the config JSON path, the converted folder, root)."""
    root = tmp_path_factory.mktemp("clip")
    config = tiny.register(str(root))
    model = tiny.create(seed=3)
    weights = root / "tiny.pt"
    torch.save(model.state_dict(), weights)
    dst = root / "jax"
    convert_in_process("convert.open_clip", "--model", tiny.NAME, "--model-config", config,
                       "--pretrained", str(weights), "--dst", str(dst), "--quiet")
    return model, weights, config, dst, root
