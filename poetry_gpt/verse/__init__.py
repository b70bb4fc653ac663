"""The 格律 knowledge every stage reads: forms, tones (平仄), 平水韵 rhyme, 词牌 patterns."""
