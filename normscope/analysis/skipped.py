"""The names under which `RunAnalysis.skipped` says why an analysis did not run.

A leaf module of constants, so that the check rules, which read `skipped`, need not import the
analysis runner that calls them.
"""

BOUNCES = "bounces"
EQUILIBRIUM = "equilibrium"
RECOMMENDATION = "recommendation"
TEXP = "texp"
