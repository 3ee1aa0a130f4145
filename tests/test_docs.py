"""docs/models.md is generated from the registry and must be up to date."""

from __future__ import annotations

from dinofeat.registry import list_models
from tests.helpers.common import REPO_ROOT
from tools.docs_table import main, models_table


def test_models_page_is_up_to_date():
    assert main([str(REPO_ROOT / "docs" / "models.md"), "--check"]) == 0, "run: python -m tools.docs_table"


def test_table_has_a_row_per_zoo_model(tmp_path):
    assert len(models_table().splitlines()) == 2 + len(list_models())
    assert main([str(tmp_path / "models.md"), "--check"]) == 1


def test_readme_model_table_is_the_generated_one():
    assert models_table() in (REPO_ROOT / "README.md").read_text(), "paste models_table() into README.md"
