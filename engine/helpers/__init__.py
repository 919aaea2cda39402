"""Small pure helpers: phone numbers, SMS segments, transliteration, sending windows, input bounds."""
