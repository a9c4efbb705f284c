"""Durable storage: card feedback, issued cards, JWT replay records, migrations, housekeeping."""
