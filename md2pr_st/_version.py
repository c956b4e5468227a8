"""The package version, in a module of its own: the model card and the Hub push read it without importing the
package root's public API."""

__version__ = "0.1.0"
