"""Everything normscope shows, grouped by who reads it.

`terminal/` (rich views for people at a terminal), `documents/` (the HTML and Markdown report),
`machine/` (JSON and CSV for scripts), `ci/` (GitHub workflow commands, JUnit XML) and `plots/`
(PNG figures). The modules at this level are shared by every audience: `escape` (untrusted text made
inert), `quantities` (one name, unit and format per quantity), `recommend_facts` and `check_facts`
(what the outputs of `recommend` and `check` say alike).
"""
