"""Small real training runs on scikit-learn's bundled digits, and the code that trained them."""
