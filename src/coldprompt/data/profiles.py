"""One-sentence English user profiles built from demographic fields, e.g. "A female user aged 25-34 who works
as a programmer."."""

from __future__ import annotations

#: MovieLens-1M age codes and the age group each stands for, from the ML-1M README (users.dat section).
ML1M_AGE_GROUPS = {
    "1": "under 18",
    "18": "18-24",
    "25": "25-34",
    "35": "35-44",
    "45": "45-49",
    "50": "50-55",
    "56": "56 or older",
}

#: MovieLens-1M occupation codes from the ML-1M README, each as the clause that ends a profile sentence.
ML1M_OCCUPATIONS = {
    "0": "whose occupation is other or not specified",
    "1": "who works as an academic/educator",
    "2": "who works as an artist",
    "3": "who works in clerical/admin",
    "4": "who is a college/grad student",
    "5": "who works in customer service",
    "6": "who works as a doctor or in health care",
    "7": "who works in an executive/managerial role",
    "8": "who works as a farmer",
    "9": "who is a homemaker",
    "10": "who is a K-12 student",
    "11": "who works as a lawyer",
    "12": "who works as a programmer",
    "13": "who is retired",
    "14": "who works in sales/marketing",
    "15": "who works as a scientist",
    "16": "who is self-employed",
    "17": "who works as a technician/engineer",
    "18": "who works as a tradesman/craftsman",
    "19": "who is unemployed",
    "20": "who works as a writer",
}

_GENDERS = {"f": "female", "m": "male", "female": "female", "male": "male"}


def describe_user(gender: str = "", age: str = "", occupation: str = "") -> str:
    """Render demographic phrases as one sentence; each argument is already a phrase or empty.

    ``gender`` is a code such as "F"/"M" or a word, ``age`` follows "aged" (e.g. "25-34" or "24"), and
    ``occupation`` is a full clause such as "who works as a programmer".
    """
    gender_word = _GENDERS.get(gender.strip().lower(), gender.strip().lower())
    words = ["A"]
    if gender_word:
        words.append(gender_word)
    words.append("user")
    if age:
        words.append(f"aged {age}")
    if occupation:
        words.append(occupation)
    return " ".join(words) + "."


def occupation_clause(occupation: str) -> str:
    """Turn a free-text occupation such as "technician" into a clause for :func:`describe_user`."""
    text = occupation.strip()
    if text.lower() in ("", "none", "other", "unknown"):
        return "whose occupation is other or not specified" if text else ""
    return f"whose occupation is {text}"
