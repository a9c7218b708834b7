"""DataAgent: the raw loan file into `data/raw/`, from Kaggle, a local file or the generator."""

from __future__ import annotations

from src.agents.base import Agent, Skill
from src.contracts import Artifact, FetchRequest, FetchResult
from src.pipelines.acquisition.local_file import copy_as_gzip
from src.utils.atomic import atomic_path
from src.utils.hashing import content_hash
from src.utils.logging import get_logger

log = get_logger(agent="DataAgent")


class DataAgent(Agent):
    """Fetch stage: one raw CSV.gz in the Kaggle layout at `data.raw_path`."""

    skills = (Skill("fetch", FetchRequest, FetchResult, "fetch"),)

    def fetch(self, request: FetchRequest) -> FetchResult:
        data = self.cfg.data
        target = self.cfg.path(data.raw_path)
        log.info("fetch.source", source=request.source, reason=request.reason)
        if request.source == "file":
            source = self.cfg.path(data.file_path)
            checked = copy_as_gzip(source, target)
            log.info("fetch.file.checked", path=str(source), compressed=checked.compressed,
                     columns=checked.columns)
            origin = str(data.file_path)
        elif request.source == "synthetic":
            from src.pipelines.acquisition.synthetic import write_synthetic_loans

            syn = data.synthetic
            with atomic_path(target) as tmp:
                write_synthetic_loans(
                    tmp,
                    rows=syn.rows,
                    seed=self.cfg.seed,
                    chunk_rows=syn.chunk_rows,
                    percent_strings=syn.percent_strings,
                    footer_lines=syn.footer_lines,
                    on_progress=lambda n: log.info("fetch.synthetic.progress", rows_written=n),
                )
            origin = f"synthetic(rows={syn.rows}, seed={self.cfg.seed})"
        else:
            from src.pipelines.acquisition.kaggle import download_kaggle_file

            kaggle = data.kaggle
            download_kaggle_file(kaggle.dataset, kaggle.file_name, target, kaggle.min_bytes)
            origin = f"kaggle:{kaggle.dataset}/{kaggle.file_name}"
        raw = Artifact(path=str(data.raw_path), sha256=content_hash(target))
        size = target.stat().st_size
        log.info("fetch.done", source=request.source, bytes=size, path=raw.path)
        return FetchResult(source=request.source, origin=origin, raw=raw, bytes=size)
