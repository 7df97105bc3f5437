"""Puts the project root on Hydra's search path, so ``conf/recipe/<name>.yaml`` can pull in
``recipes/<name>/config.yaml``: a recipe's settings live beside its README and scripts."""

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

ROOT = Path(__file__).resolve().parents[2]


class ASRRecipesSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="asr-recipes", path=f"file://{ROOT}")
