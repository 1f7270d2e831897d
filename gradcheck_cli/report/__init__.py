"""Renderers: each turns finished results into text, and never computes anything itself.

``table`` (Rich) and ``json`` render ``xentcheck run``; ``jacobian`` renders ``xentcheck jacobian``.
"""
