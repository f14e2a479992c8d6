"""Output for CI systems: GitHub workflow commands and job summaries, JUnit XML (`normscope check`)."""
