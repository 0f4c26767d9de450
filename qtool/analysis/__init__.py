"""The PTQ debugging flow (white paper 4.8): analyze and mixed precision."""
