"""Speed and memory of gendl against faithful re-implementations of the book's listings."""
