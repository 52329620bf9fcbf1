SELECT 1 -- harmless
; DROP TABLE users