"""Instruction sentences for the restoration tasks: training templates, held-out paraphrases and off-task sentences.

The training templates are built compositionally (politeness prefix × verb × object, plus free sentences); the
held-out paraphrases are written independently and never used for training, so that prompt-understanding accuracy
measures generalisation to new wordings.
"""

from __future__ import annotations

import itertools

TASKS = ("noise", "haze", "rain", "none")
RESTORATION_TASKS = ("noise", "haze", "rain")

_PREFIXES = ("", "please ", "could you ", "I want you to ", "help me ")
_VERBS = ("remove", "get rid of", "clean up", "reduce", "eliminate", "take away", "erase")
_OBJECTS = {
    "noise": ("the noise", "the grain", "the graininess", "the sensor noise", "the speckles", "the static",
              "the noisy pixels", "the gaussian noise"),
    "haze": ("the haze", "the fog", "the mist", "the smog", "the haziness", "the foggy veil", "the murky air",
             "the atmospheric haze"),
    "rain": ("the rain", "the rain streaks", "the raindrops", "the rain lines", "the streaks of rain",
             "the rainfall", "the falling rain", "the rainy streaks"),
}
_FREE_SENTENCES = {
    "noise": ("denoise this image", "denoise the photo", "this picture is too noisy", "make the image less grainy",
              "the photo is grainy, fix it", "smooth out the noise", "clean the noisy photo",
              "it was shot at high ISO, please clean it", "noise reduction please", "make it look clean, not grainy",
              "remove noise", "denoise"),
    "haze": ("dehaze this image", "dehaze the photo", "this picture is too hazy", "make the scene clearer",
             "the photo is foggy, fix it", "clear the fog away", "restore the contrast lost to haze",
             "it was taken on a misty day, please clear it", "haze removal please", "see through the fog",
             "remove haze", "dehaze"),
    "rain": ("derain this image", "derain the photo", "this picture has rain on it",
             "make it look like it stopped raining",
             "the photo has rain streaks, fix it", "wipe out the rain", "clean the rainy photo",
             "it was shot in a downpour, please clean it", "rain removal please", "take the drizzle out",
             "remove rain", "derain"),
    "none": ("the image is fine", "leave it as it is", "no changes needed", "this photo is already clean",
             "do nothing", "keep the picture unchanged", "it looks good already", "don't touch it",
             "what a lovely day", "tell me a joke", "make it look like a painting", "how tall is mount everest",
             "add a cat to the picture", "turn it into black and white", "the weather is nice today",
             "sharpen the colours a bit", "I like turtles", "translate this into french", "asdf qwerty",
             "who took this picture", "make it brighter", "crop the left side", "what time is it",
             "increase the saturation", "write a poem about the sea", "identity", "nothing to fix here",
             "the photo is perfect", "just return the original", "rotate it by ninety degrees"),
}

HELDOUT_PARAPHRASES = {
    "noise": ("My low-light shot came out all speckled, can it be smoothed?",
              "There is a lot of digital grain in this picture",
              "Could you tidy up the fuzzy dots all over my snapshot?",
              "the camera sensor added random noise, undo that",
              "Make this grainy night photo look clean again",
              "I'd love a noise-free version of this image",
              "Kill the salt-and-pepper looking grain",
              "It's too noisy to print, fix it please"),
    "haze": ("Everything looks washed out by fog, bring back the details",
             "Can you cut through the mist in this landscape?",
             "The air was smoggy, make the view crisp",
             "this picture looks milky and hazy, clear it up",
             "Give me a clear-sky version without the fog",
             "Lift the grey veil of haze from the city skyline",
             "The distance is lost in murk, restore visibility",
             "Defog this photo please"),
    "rain": ("It was pouring when I took this, get the streaks out",
             "Remove the white lines of falling rain",
             "Can you make this look like a dry day instead of a rainy one?",
             "There are rain streaks across the whole shot",
             "Please clear away the drizzle in front of the camera",
             "The downpour ruined my picture, clean off the rain",
             "Erase the diagonal streaks left by the rainstorm",
             "Make the rain disappear from this photo"),
    "none": ("What is the capital of Italy?",
             "This picture looks great to me, keep it",
             "Please paint a moustache on the man",
             "no restoration is necessary",
             "I just want to see the image",
             "Convert the photo to sepia tones",
             "banana keyboard purple",
             "How many people are in this photo?"),
}

SUGGESTED_PROMPTS = {
    "noise": "Please remove the noise from this photo",
    "haze": "Please remove the haze from this photo",
    "rain": "Please remove the rain streaks from this photo",
    "none": "Leave the image as it is",
}


def training_templates() -> dict[str, list[str]]:
    """All training sentences per task (compositional templates plus free sentences), deduplicated and sorted."""
    templates: dict[str, set[str]] = {task: set(_FREE_SENTENCES[task]) for task in TASKS}
    for task, objects in _OBJECTS.items():
        for prefix, verb, obj in itertools.product(_PREFIXES, _VERBS, objects):
            templates[task].add(f"{prefix}{verb} {obj}")
    return {task: sorted(sentences) for task, sentences in templates.items()}


def heldout_paraphrases() -> dict[str, list[str]]:
    """Evaluation-only paraphrases per task; none of them appears among the training templates."""
    return {task: list(sentences) for task, sentences in HELDOUT_PARAPHRASES.items()}
