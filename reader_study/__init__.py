"""The blinded reader study: a study is a folder (an SQLite database and blinded images) that `create` builds,
`reading` answers one reader at a time, `report` sums up; `web` is a thin browser front end over `reading`.
Imports run one way: mini_ldm.errors/io and readers for images, stats for the figures; never ti, classifier,
membership or measure."""
