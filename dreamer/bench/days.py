"""Synthetic days for `dreamer bench`: fictional personal facts told in chat, and probes of five kinds.

    make_days(seed=0, days=3, facts=10) -> [{"day", "records", "probes"}, ...]

Each day tells `facts` facts about the user (a pet's name, a sister's city, a job), each once,
in one phrasing, with a short assistant reply, spread over 1-3 conversations that open with
small talk. From the second day on, up to two of the facts are **updates**: a fact of an earlier
day told again with a new value ("my sister Ana moved again, she lives in Porto now"). Every fact
has probes, each a question with its answer and three distractors of the same kind (chance 25%):

- `recall`: the fact asked in words unlike the chat's ("In which city does my sister Ana live now?").
- `implication`: the fact applied, not repeated ("I'm visiting Ana next week: which city should I
  book a train to?").
- `update`: the updated fact's question; the new value is the answer and the old one is a
  distractor, so the old value must lose. The earlier day's probes of that fact are superseded
  (`superseded_on`) and no longer scored once the update's night has run.
- `abstain`: a question about something never told ("What is my grandmother's name?"); the answer
  is an "I don't know"-style reply, the distractors are values a confabulating model would claim.
- `general`: general knowledge (assets/bench_general.jsonl), the same every day: what a night
  must not break.

Everything is drawn from `random.Random(seed)`: the same seed gives the same days, and day 1 does
not depend on how many days are asked for. No two facts share an answer or a person. A run that
needs more facts than the 30 kinds of personal facts give (e.g. 14 days x 5 facts) goes on with
facts about acquaintances ("My colleague Greta always drinks mint tea."), drawn from a stream of
their own so the days of shorter runs stay as they were; abstain probes last 5 days (15 never-told
questions), later days have none.
"""

from __future__ import annotations

import json
import random
from datetime import date, timedelta

from dreamer.sleep.config import ASSETS

FIRST_DAY = date(2025, 3, 3)
DISTRACTORS = 3
UPDATES_PER_DAY = 2
ABSTAIN_PER_DAY = 3
IDK = "You haven't told me that."

POOLS = {k: v.split("|") for k, v in {
    "city": "Lisbon|Porto|Valencia|Lyon|Krakow|Tallinn|Bergen|Trieste|Ghent|Seville|Leipzig|Bologna|Galway|Tampere",
    "name": "Ana|Tomas|Ingrid|Rafael|Yuki|Priya|Mateo|Oksana|Lars|Amara|Dmitri|Noor|Felix|Carmen|Hugo|Leila|"
            "Soren|Beatriz|Kofi|Elif",
    "pet": "Miso|Pepper|Biscuit|Noodle|Juniper|Waffle|Pickle|Mochi|Ziggy|Clementine|Tofu|Pumpkin",
    "job": "marine biologist|dental hygienist|air traffic controller|landscape architect|sound engineer|"
           "pastry chef|tax auditor|veterinary nurse|court interpreter|geologist",
    "food": "ramen|paella|pierogi|shakshuka|pho|risotto|falafel|goulash|tamales|bibimbap",
    "colour": "teal|burgundy|mustard yellow|silver|olive green|navy blue|bright orange|charcoal grey",
    "hobby": "pottery|rock climbing|birdwatching|fencing|beekeeping|origami|salsa dancing|archery|sailing",
    "surname": "Okafor|Lindqvist|Moreau|Tanaka|Kowalski|Haddad|Brennan|Castillo|Novak|Ferreira",
    "weekday": "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday",
    "instrument": "cello|banjo|trumpet|harp|accordion|ukulele|oboe|drums",
    "language": "Portuguese|Finnish|Japanese|Swahili|Icelandic|Korean|Greek|Polish",
    "car": "Volvo|Fiat|Subaru|Skoda|Peugeot|Mazda|Renault|Kia",
    "drink": "cortado|chai latte|matcha|hibiscus tea|kombucha|hot chocolate|espresso|oat milk flat white",
    "flower": "tulips|peonies|lavender|sunflowers|orchids|daffodils|dahlias|camellias",
    "sport": "volleyball|badminton|water polo|handball|squash|curling|rugby|table tennis",
    "allergen": "peanuts|shellfish|pollen|penicillin|sesame|kiwi|latex|strawberries",
    "country": "Iceland|Vietnam|Morocco|Chile|Norway|Japan|Peru|Greece|Georgia|Mexico",
    "author": "Ursula Le Guin|Haruki Murakami|Toni Morrison|Italo Calvino|Kazuo Ishiguro|Olga Tokarczuk|"
              "Jorge Luis Borges",
    "street": "Maple|Juniper|Harbour|Chestnut|Willow|Quarry|Orchard|Lantern",
    "plant": "monstera|fiddle-leaf fig|snake plant|bonsai|rubber plant|bird of paradise|aloe vera|peace lily",
    "animal": "tortoise|parrot|ferret|hamster|goldfish|rabbit|iguana|hedgehog",
    "subject": "chemistry|art history|linguistics|civil engineering|philosophy|astronomy|economics|botany",
}.items()}

# (pool, how the user says it, the recall question, the implication question, how an update says it
# or None for a fact that does not change). {v} the value, {p} a person's name.
SLOTS = [
    ("pet", "By the way, my dog is called {v}.", "What is the name of my dog?",
     "I'm ordering an engraved tag for my dog's collar. Which name should go on it?", None),
    ("pet", "We adopted a kitten last week and named her {v}.", "What did we name our new kitten?",
     "I'm writing our new kitten's name on her food bowl. What do I write?", None),
    ("city", "My sister {p} moved to {v} last year.", "In which city does my sister {p} live now?",
     "I want to visit my sister {p} next month. Which city should I book a train to?",
     "Big news from my sister {p}: she moved again, she lives in {v} now."),
    ("job", "I work as a {v}, it keeps me busy.", "What is my job?",
     "I'm updating my profile on a careers website. What job title should I put?",
     "I changed careers! I'm working as a {v} now."),
    ("food", "Honestly, my favourite food is {v}. I could eat it every day.", "Which dish do I like most?",
     "Pick a dish for my birthday dinner that I would love.",
     "My tastes changed: these days my favourite food is {v}."),
    ("name", "My best friend from school is called {v}.", "What is the name of my best friend from school?",
     "I'm sending a postcard to my best friend from school. Whose name goes on it?", None),
    ("colour", "I finally bought a car, a {v} one!", "What colour is my car?",
     "I lost my car in a big car park. What colour should I look for?",
     "I had my car repainted, it's {v} now."),
    ("hobby", "On weekends I mostly do {v}.", "Which hobby do I spend my weekends on?",
     "Suggest a weekend club I could join, based on what I do on weekends.",
     "I've taken up a new weekend hobby: {v}."),
    ("city", "I was born in {v}, though we left when I was small.", "Where was I born?",
     "A form asks for my place of birth. What should I write?", None),
    ("surname", "My doctor is Dr. {v}, she is very patient.", "What is my doctor's name?",
     "I need to call my doctor's office. Whom should I ask for?",
     "I switched doctors; my new doctor is Dr. {v}."),
    ("weekday", "I have a yoga class every {v} evening.", "On which day of the week is my yoga class?",
     "Which evening should I keep free every week for yoga?",
     "My yoga class moved, it's on {v} evenings now."),
    ("instrument", "I've been learning to play the {v} since spring.", "Which instrument am I learning?",
     "I want to buy sheet music for the instrument I'm learning. Sheet music for which instrument?", None),
    ("language", "I'm taking evening lessons in {v}.", "Which language am I studying?",
     "Recommend a dictionary for the language I'm learning. Which language should it be?",
     "I dropped my old evening class and started lessons in {v} instead."),
    ("job", "My brother {p} is a {v}.", "What does my brother {p} do for a living?",
     "My brother {p} needs new work clothes. What job are they for?", None),
    ("name", "My partner is named {v}; we met at university.", "What is my partner's name?",
     "I'm booking a restaurant table for my partner and me. Whose name do I give besides mine?", None),
    ("car", "My car is an old {v} I bought second-hand.", "What make is my car?",
     "I need spare parts for my car. Which make should I ask the shop for?",
     "I sold my old car and bought a {v}."),
    ("drink", "Every morning I have a {v} before work.", "What do I drink in the morning?",
     "Order my usual morning drink for me at the café. What should I get?",
     "I changed my morning routine: it's a {v} before work now."),
    ("flower", "My favourite flowers are {v}.", "Which flowers do I like best?",
     "Someone wants to send me flowers I'd love. Which flowers should they pick?", None),
    ("city", "My mother lives in {v}; I visit her every summer.", "Which city do I travel to when I visit my mother?",
     "I'm booking my summer trip to see my mother. Which city is the destination?",
     "My mother moved, she lives in {v} now."),
    ("name", "Our neighbour {v} has been helping me with the garden.",
     "Who is the neighbour that helps me with the garden?",
     "I want to thank the neighbour who helps with my garden. Whom do I bake a cake for?", None),
    ("sport", "I play {v} in a local amateur club.", "Which sport do I play at my club?",
     "I need new gear for my club's sport. Gear for which sport?",
     "I left my old club and play {v} now."),
    ("allergen", "I'm allergic to {v}, so I have to be careful.", "What am I allergic to?",
     "A restaurant asks about my allergies. What should I tell them to leave out?", None),
    ("colour", "My favourite colour has always been {v}.", "Which colour do I like best?",
     "Choose a colour for my new sweater that I'll like.", None),
    ("name", "My manager at work is called {v}.", "What is my manager's name?",
     "I need to ask my manager for a day off. To whom do I send the request?",
     "We got a new manager at work, she's called {v}."),
    ("country", "Next month we're going on holiday to {v}.", "Which country am I travelling to next month?",
     "Which country's travel guide should I buy for next month's holiday?",
     "We changed our holiday plans, we're going to {v} next month instead."),
    ("author", "I'm reading a novel by {v} right now.", "Whose novel am I reading at the moment?",
     "Recommend another book by the author I'm reading now. Which author?", None),
    ("street", "We live on {v} Street.", "On which street is my home?",
     "A courier asks for my street. What should I tell them?",
     "We moved house! We live on {v} Street now."),
    ("plant", "There's a big {v} in my living room and I'm proud of it.", "What plant do I keep in my living room?",
     "I'm buying fertiliser for the plant in my living room. For which plant?", None),
    ("animal", "When I was a kid we had a pet {v}.", "What kind of pet did I have as a child?",
     "Tell me which animal my childhood pet was, so I can draw it for my kids.", None),
    ("subject", "At university I studied {v}.", "What did I study at university?",
     "A job form asks for my university degree subject. What do I write?", None),
]

# Facts about the people around the user, for runs longer than the kinds above allow (the
# 14-night retention run): a relation, a name and one attribute each, never updated. They come
# after the kinds above, in an order and with names and values drawn from a stream of their own,
# so every run the kinds above suffice for keeps its days.
ACQUAINTANCE_POOLS = {k: v.split("|") for k, v in {
    "acquaintance": "Bruno|Greta|Omar|Svetlana|Idris|Margit|Paulo|Hanne|Ravi|Zofia|Emeka|Astrid|Julien|Mirela|Tariq|"
                    "Signe|Vikram|Ottilie|Jonas|Farah|Anselm|Kaori|Lucian|Wanjiru|Per|Adaeze|Emil|Rosalind|Teo|Malak|"
                    "Gideon|Ilse|Nikolai|Sunniva|Bastian|Ayla|Cyril|Dagny|Esteban|Freya|Haruto|Imogen|Kasimir|Liv|"
                    "Marek|Nadia|Osric|Petra",
    "hometown": "Aarhus|Brno|Cluj|Debrecen|Eindhoven|Faro|Graz|Heraklion|Innsbruck|Jyvaskyla|Kaunas|Ljubljana",
    "beverage": "ginger beer|rooibos tea|macchiato|lemonade|mint tea|iced coffee|tomato juice|elderflower cordial|"
                "sparkling water|cold brew",
    "pastime": "chess|fly fishing|quilting|karaoke|geocaching|woodcarving|stargazing|kayaking|calligraphy|juggling",
    "music": "jazz|opera|reggae|bluegrass|techno|flamenco|k-pop|blues|baroque|salsa",
    "dish": "lasagne|moussaka|ceviche|dumplings|curry|tagine|borscht|enchiladas|gnocchi|laksa",
    "vehicle": "scooter|camper van|tandem bicycle|motorbike|pickup truck|electric bike|sailboat|vintage Beetle",
    "profession": "librarian|electrician|midwife|architect|beekeeper|bus driver|florist|pharmacist|surveyor|"
                  "translator",
    "pet_kind": "chinchilla|greyhound|axolotl|budgie|gecko|guinea pig|cockatiel|corn snake",
}.items()}
RELATIONS = ["colleague", "neighbour", "cousin", "school friend", "landlord", "yoga teacher"]
ATTRIBUTES = [  # pool, tell, question, implication; {r} the relation, {a} their name, {v} the value
    ("hometown", "My {r} {a} grew up in {v}.", "Where did my {r} {a} grow up?",
     "I'm making a quiz about my {r} {a}. In which town did {a} grow up?"),
    ("beverage", "My {r} {a} always drinks {v}.", "What does my {r} {a} always drink?",
     "I'm getting a round of drinks and my {r} {a} is with us. What should I order for {a}?"),
    ("pastime", "My {r} {a} spends every weekend on {v}.", "What does my {r} {a} do every weekend?",
     "I want to give my {r} {a} a book about their weekend passion. What should the book be about?"),
    ("music", "My {r} {a} only listens to {v}.", "What music does my {r} {a} listen to?",
     "I'm making a playlist for my {r} {a}. Which genre should it be?"),
    ("dish", "My {r} {a} makes the best {v} I've ever had.", "Which dish does my {r} {a} make best?",
     "My {r} {a} is cooking for us on Saturday. Which dish should I ask {a} for?"),
    ("vehicle", "My {r} {a} gets around on a {v}.", "How does my {r} {a} get around?",
     "I'm lending my {r} {a} a garage spot. What will {a} park in it?"),
    ("profession", "My {r} {a} works as a {v}.", "What is my {r} {a}'s job?",
     "My {r} {a} could help with something related to their job. What is {a}'s profession?"),
    ("pet_kind", "My {r} {a} keeps a {v} as a pet.", "What pet does my {r} {a} keep?",
     "I'm pet-sitting for my {r} {a}. What kind of animal will I look after?"),
]
ACQUAINTANCE_SLOTS = [(pool, tell.replace("{r}", r), question.replace("{r}", r), implication.replace("{r}", r), None)
                      for r in RELATIONS for pool, tell, question, implication in ATTRIBUTES]
ALL_SLOTS = SLOTS + ACQUAINTANCE_SLOTS
VALUES = {**POOLS, **ACQUAINTANCE_POOLS}

# Questions about things the user never tells in any synthetic day (pool of the values a
# confabulating model might claim).
NEVER_TOLD = [
    ("name", "What is my grandmother's name?"), ("city", "In which city does my uncle live?"),
    ("pet", "What is my rabbit called?"), ("job", "What does my cousin do for a living?"),
    ("food", "What did I cook for dinner last Friday?"), ("country", "Where did I go on my honeymoon?"),
    ("name", "What is my dentist's first name?"), ("instrument", "Which instrument did my father play?"),
    ("colour", "What colour is my front door?"), ("weekday", "On which day is my book club?"),
    ("language", "Which language does my neighbour's wife speak at home?"), ("sport", "Which sport does my son play?"),
    ("car", "What car does my sister drive?"), ("city", "Where did my parents meet?"),
    ("author", "Who wrote the last book my book club read?"),
]
OPENERS = [("Hi! Got a minute?", "Of course, what's on your mind?"), ("Good morning!", "Good morning! How can I help?"),
           ("Hey, just wanted to chat a bit.", "Sure, I'm listening."),
           ("Hello again.", "Hello! Nice to hear from you.")]
REPLIES = ["That's good to know!", "Thanks for telling me.", "Oh, nice!", "I'll keep that in mind.",
           "Sounds lovely.", "Interesting, tell me more whenever you like."]


def general_probes() -> list[dict]:
    """General-knowledge probes (the same every night): what a night must not break."""
    rows = [json.loads(line) for line in (ASSETS / "bench_general.jsonl").read_text().splitlines() if line.strip()]
    return [{"day": "", "kind": "general", **row} for row in rows]


def max_facts(days: int) -> int:
    return len(ALL_SLOTS) // days + (UPDATES_PER_DAY if days > 1 else 0)


def make_days(seed: int, days: int, facts: int, updates: int = UPDATES_PER_DAY) -> list[dict]:
    """Per day: its conversations (Store.import_conversations records) and its probes (dicts);
    from day 2, up to `updates` of its facts are updates of earlier ones (0: only new facts, so
    every day's facts are asked after every later night: a retention run)."""
    if days < 1 or facts < 1:
        raise ValueError("days and facts must be at least 1")
    new_needed = facts * days - updates * (days - 1) if facts > updates else facts * days
    if new_needed > len(ALL_SLOTS):
        raise ValueError(f"{days} days x {facts} facts needs {new_needed} kinds of facts; there are {len(ALL_SLOTS)}")
    rng = random.Random(seed)
    slots = rng.sample(range(len(SLOTS)), len(SLOTS))  # all of them: day 1 does not depend on --days
    never = rng.sample(NEVER_TOLD, len(NEVER_TOLD))  # 3 a day while they last (5 days), then none
    unused = {k: rng.sample(v, len(v)) for k, v in POOLS.items()}  # no two facts share an answer or a person
    more = random.Random(f"{seed}-acquaintances")  # its own stream: the draws above never change
    slots += [len(SLOTS) + i for i in more.sample(range(len(ACQUAINTANCE_SLOTS)), len(ACQUAINTANCE_SLOTS))]
    unused.update({k: more.sample(v, len(v)) for k, v in ACQUAINTANCE_POOLS.items()})
    known: list[dict] = []  # facts told so far, each {slot, value, person, day, probes}
    out = []
    for k in range(days):
        day = str(FIRST_DAY + timedelta(days=k))
        changeable = [f for f in known if ALL_SLOTS[f["slot"]][4] and not f.get("updated")]
        n_updates = min(updates, len(changeable), facts - 1) if k else 0
        told, probes = [], []
        for fact in rng.sample(changeable, n_updates):
            pool, _, question, implication, update = ALL_SLOTS[fact["slot"]]
            old, new = fact["value"], unused[pool].pop()
            fact["updated"] = True
            for probe in fact["probes"]:
                probe["superseded_on"] = day
            told.append(update.format(v=new, p=fact["person"]))
            others = rng.sample([v for v in POOLS[pool] if v not in (old, new)], DISTRACTORS - 1)
            probes.append({"day": day, "kind": "update", "question": question.format(p=fact["person"]),
                           "answer": new, "distractors": [old] + others, "old": old})
        if len(slots) < facts - n_updates:
            raise ValueError(f"{days} days x {facts} facts needs more kinds of facts than the {len(SLOTS)} there are")
        for slot in slots[:facts - n_updates]:
            pool, tell, question, implication, _ = ALL_SLOTS[slot]
            people = "name" if "{p}" in tell else "acquaintance" if "{a}" in tell else None
            value, person = unused[pool].pop(), unused[people].pop() if people else ""
            wrong = rng.sample([v for v in VALUES[pool] if v != value], DISTRACTORS)
            told.append(tell.format(v=value, p=person, a=person))
            fact_probes = [{"day": day, "kind": kind, "question": text.format(p=person, a=person), "answer": value,
                            "distractors": wrong} for kind, text in (("recall", question), ("implication", implication))]
            probes += fact_probes
            known.append({"slot": slot, "value": value, "person": person, "probes": fact_probes})
        slots = slots[facts - n_updates:]
        for pool, question in never[k * ABSTAIN_PER_DAY:(k + 1) * ABSTAIN_PER_DAY]:
            probes.append({"day": day, "kind": "abstain", "question": question, "answer": IDK,
                           "distractors": rng.sample(POOLS[pool], DISTRACTORS)})
        rng.shuffle(told)
        n_conv = rng.randint(1, min(3, len(told)))
        records = []
        for part in (told[i::n_conv] for i in range(n_conv)):
            opener, greeting = rng.choice(OPENERS)
            messages = [{"role": "user", "content": opener}, {"role": "assistant", "content": greeting}]
            for sentence in part:
                messages += [{"role": "user", "content": sentence}, {"role": "assistant", "content": rng.choice(REPLIES)}]
            records.append({"day": day, "title": part[0][:48], "messages": messages})
        out.append({"day": day, "records": records, "probes": probes})
    return out


def controls(probes: list[dict], seed: int) -> dict[str, list[dict]]:
    """Checks on what a recall gain means, as multiple choice (the suffix names the control).

    `inday`: the day's recall questions with other answers of the same day as distractors; a
    model that favours today's words whatever it is asked stays at chance there. `generic`: the
    original options after "Tell me something."; a rise there is a rise in the answers' prior.
    """
    recall = [p for p in probes if p["kind"] == "recall"]
    rng = random.Random(seed + 1)  # its own stream: the days above do not change
    answers = [p["answer"] for p in recall]
    inday = [{**p, "kind": "inday", "distractors": rng.sample([a for a in answers if a != p["answer"]],
                                                             min(DISTRACTORS, len(answers) - 1))}
             for p in recall if len(answers) > 1]
    generic = [{**p, "kind": "generic", "question": "Tell me something."} for p in recall]
    return {"inday": inday, "generic": generic}
