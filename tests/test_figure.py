"""The shared figure helper (vlrm_jax/figure.py): a PNG in a new folder on a clean exit, nothing on an error,
and no figure left open either way."""
import pytest

from vlrm_jax.figure import saved_figure


def test_saved_figure_writes_the_png_and_closes(tmp_path):
    import matplotlib.pyplot as plt

    path = tmp_path / "new" / "plot.png"
    with saved_figure(path, 1, 2, figsize=(4, 2)) as (fig, (left, right)):
        left.plot([0, 1], [1, 0])
        right.plot([0, 1], [0, 1])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.get_fignums()

    broken = tmp_path / "broken.png"
    with pytest.raises(ValueError, match="bad data"):
        with saved_figure(broken) as (_, ax):
            raise ValueError("bad data")
    assert not broken.exists() and not plt.get_fignums()
