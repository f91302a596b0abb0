"""Face alignment: one clip (clip), a whole dataset copy (dataset), dlib landmarks, preview sheets."""
