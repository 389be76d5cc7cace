"""Built-in strategy plugins, installed as ``apoptosis.strategies`` and registered through the
``apoptosis.strategies`` entry-point group like any third-party strategy."""
