"""The orchestrators: the CLI, `run` over all stages, the refit backtest, the registry's promotion.

They decide which stages run, in which directories and in what order; the stages and the
library do the work.
"""
