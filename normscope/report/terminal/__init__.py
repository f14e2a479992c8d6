"""Rich renderables for the terminal: `analyze`, `check`, `recommend`, and the tables and console they print through."""
