"""Continual training's schedule: which corpus each step trains on, where phases end and when every
corpus is evaluated. A run on one corpus is one phase that never ends."""

from __future__ import annotations

from apoptosis.core.config import RunConfig
from apoptosis.core.data import CharDataset, CharVocab
from apoptosis.core.encoded_corpus import EncodedCorpus, corpus_dataset, encode_file, remap
from apoptosis.core.errors import ApoptosisError


class PhaseSchedule:
    def __init__(self, config: RunConfig, phase_corpora: list[str]) -> None:
        self.continual = config.continual
        self.phase_corpora = phase_corpora

    @property
    def phased(self) -> bool:
        return bool(self.continual.phases)

    def phase_of(self, step: int) -> int:
        """The phase (0-based) that training step ``step`` (1-based) belongs to."""
        if not self.phased:
            return 0
        return min((step - 1) // self.continual.steps_per_phase, len(self.phase_corpora) - 1)

    def corpus_at(self, step: int) -> str:
        """The corpus of training step ``step`` (of step 1 before any)."""
        return self.phase_corpora[self.phase_of(max(step, 1))]

    def ends_at(self, step: int) -> bool:
        return self.phased and step % self.continual.steps_per_phase == 0

    def starts_after(self, step: int) -> bool:
        """Step ``step + 1`` is the first of a phase."""
        return self.phased and step % self.continual.steps_per_phase == 0

    def evaluates_all_at(self, step: int) -> bool:
        """Every corpus is evaluated at each phase end and ``plasticity_steps`` into each phase
        (never with ``continual.evaluate_all`` off)."""
        c = self.continual
        return (
            self.phased and c.evaluate_all and step % c.steps_per_phase in (0, c.plasticity_steps % c.steps_per_phase)
        )


def load_corpora(
    config: RunConfig, vocab_chars: list[str] | None, supplied: dict[str, CharDataset] | None = None
) -> tuple[dict[str, CharDataset], list[str]]:
    """The datasets by corpus name, and the corpus of each phase. One corpus (``data.path``,
    named ``main``) unless ``continual.phases`` is set; then one vocabulary over all corpora,
    fixed first. ``vocab_chars`` (from a checkpoint) fixes the vocabulary on resume.
    ``supplied`` datasets (generated ones, named by ``continual.phases``) are used as they are.
    Files are encoded once into a cache and memory-mapped (``apoptosis.core.encoded_corpus``); the
    built-in corpora are text."""
    if supplied is not None:
        return supplied_corpora(config, vocab_chars, supplied)
    block, val_fraction = config.model.block_size, config.data.val_fraction
    vocab = CharVocab(vocab_chars) if vocab_chars else None
    if not config.continual.phases:
        data = corpus_dataset(config.data.path, block, val_fraction, vocab, config.data.keep_line_endings)
        return {"main": data}, ["main"]
    from apoptosis.core.corpora import BUILTIN_CORPORA, corpus_text, distinct_corpora, parse_phases, union_vocab

    specs = parse_phases(",".join(config.continual.phases))
    sources: dict[str, str | EncodedCorpus] = {
        spec.name: corpus_text(spec) if spec.name in BUILTIN_CORPORA else encode_file(spec.source)
        for spec in distinct_corpora(specs)
    }
    vocab = vocab or union_vocab(s if isinstance(s, str) else "".join(s.vocab.chars) for s in sources.values())
    corpora = {
        name: CharDataset.from_text(source, block, val_fraction, vocab)
        if isinstance(source, str)
        else CharDataset.from_ids(vocab, remap(source, vocab).ids, block, val_fraction)
        for name, source in sources.items()
    }
    return corpora, [spec.name for spec in specs]


def supplied_corpora(
    config: RunConfig, vocab_chars: list[str] | None, supplied: dict[str, CharDataset]
) -> tuple[dict[str, CharDataset], list[str]]:
    """``supplied`` checked against the run: a dataset for every phase, one vocabulary, the
    checkpoint's on resume."""
    phases = config.continual.phases
    missing = sorted(set(phases) - set(supplied))
    if not phases or missing:
        raise ApoptosisError(f"no dataset was supplied for phase {missing[0] if missing else '(none listed)'}")
    vocabs = {tuple(data.vocab.chars) for data in supplied.values()}
    if len(vocabs) != 1 or (vocab_chars is not None and vocabs != {tuple(vocab_chars)}):
        raise ApoptosisError("the supplied datasets must share one vocabulary, the run's own")
    return dict(supplied), list(phases)
