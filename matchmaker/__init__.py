"""Matchmaker: which warm GPU slot each player gets, and what happens when none is free."""
