"""A package of import targets, for dotted module names."""
