"""The version, in a module of its own (the package's face imports the API lazily)."""

__version__ = "0.1.0"
