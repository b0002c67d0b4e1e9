"""port.readme_block: the one writer of README's generated blocks."""

from __future__ import annotations

import pytest

from port.readme_block import MarkerError, current_block, update_block

BEGIN, END = "<!-- t:begin -->", "<!-- t:end -->"


def test_block_is_found_replaced_and_then_current(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"head\n{BEGIN}\nold\n{END}\ntail\n")
    new = f"{BEGIN}\nnew row\n{END}"
    assert current_block(path.read_text(), BEGIN, END) == f"{BEGIN}\nold\n{END}"
    assert update_block(path, new, BEGIN, END, write=False) is True
    assert "old" in path.read_text()  # a check leaves the file alone
    assert update_block(path, new, BEGIN, END, write=True) is True
    assert path.read_text() == f"head\n{new}\ntail\n"
    assert update_block(path, new, BEGIN, END, write=False) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # no temporary left


@pytest.mark.parametrize("text", [f"{BEGIN}\nno end\n", f"no begin\n{END}\n", ""])
def test_a_missing_marker_names_the_file_and_the_markers(tmp_path, text):
    path = tmp_path / "README.md"
    path.write_text(text)
    with pytest.raises(MarkerError) as err:
        update_block(path, f"{BEGIN}\nx\n{END}", BEGIN, END, write=True)
    assert str(path) in str(err.value) and BEGIN in str(err.value) and END in str(err.value)
    assert path.read_text() == text
