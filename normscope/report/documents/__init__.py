"""The HTML and Markdown report of `normscope report`: a document model, its builders and its two writers."""
