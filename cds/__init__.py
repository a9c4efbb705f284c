"""twitch-cds: a CDS Hooks service naming the likely causes and red flags of muscle twitching."""
