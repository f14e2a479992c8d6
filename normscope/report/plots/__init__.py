"""PNG figures (matplotlib, object API on Agg): the run's trajectories, the recommendation, the equilibrium."""
