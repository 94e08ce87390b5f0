"""Downstream fine-tuning (`raptr finetune`, `raptr compare --downstream`): `config` ([finetune]
settings), `tasks` (TASK specs -> examples) and `builtin` (shakespeare-genre), `heads` (BERT pooler
in HF's layout, UL2 mean-pooled prefix), `loop` (one seed), `metrics`, `run` (seeds, scratch,
finetune.json), `downstream` (compare). No typer or rich here: the CLI owns the console."""
