"""Built-in English text the tiny tokenizers are trained on.

The text is generated from fixed word lists with a fixed-seed `random.Random`, so it is
the same on every machine and Python 3 version. It mixes image captions (what the
describer talks about), plain prose and JSON (braces, quotes, colons, commas, numbers),
so a tokenizer trained on it can spell English words and JSON under constrained decoding.
"""

from __future__ import annotations

import json
import random
from functools import cache


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


COLORS = _words(
    "red orange yellow green blue purple pink brown black white gray grey silver golden beige "
    "violet teal cyan magenta maroon navy olive turquoise crimson amber ivory dark light pale bright"
)

OBJECTS = _words(
    "cat dog horse cow sheep bird duck chicken fish rabbit mouse tiger lion bear elephant zebra "
    "giraffe monkey fox wolf deer owl eagle frog snake turtle butterfly bee spider whale dolphin "
    "person man woman child boy girl baby people crowd family friend teacher doctor chef farmer "
    "car bus truck bicycle motorcycle train plane boat ship helicopter tractor taxi van scooter "
    "house building tower bridge castle church temple road street highway path fence wall door "
    "window roof chimney stairs garden park field forest tree flower grass bush leaf rock stone "
    "mountain hill valley river lake sea ocean beach island desert sky cloud sun moon star rain "
    "snow storm rainbow fire smoke water ice sand mud table chair sofa bed lamp clock mirror "
    "shelf book pen pencil paper cup mug glass bottle plate bowl spoon fork knife pot pan oven "
    "kitchen bathroom bedroom office classroom library museum market shop store restaurant cafe "
    "apple banana orange lemon cherry grape strawberry pizza bread cake cookie sandwich salad "
    "soup rice pasta cheese egg coffee tea juice milk hat shirt dress coat jacket shoe boot scarf "
    "glove bag backpack umbrella ball kite toy guitar piano violin drum camera phone computer "
    "laptop screen keyboard television radio robot sign flag balloon candle vase painting statue "
    "fountain bench lighthouse windmill tent boat sail wheel engine rocket planet galaxy"
)

PLACES = _words(
    "kitchen street park beach forest city village farm garden room office field meadow harbor "
    "station airport market square stadium school hospital studio gallery hallway balcony "
    "rooftop alley countryside jungle canyon waterfall glacier volcano swamp prairie"
)

ADJECTIVES = _words(
    "small large tiny huge big little tall short long wide narrow old new young ancient modern "
    "happy sad angry calm quiet loud busy empty full clean dirty wet dry warm cold hot cool soft "
    "hard smooth rough shiny dull sharp round square flat curved heavy light fast slow strong "
    "weak beautiful ugly pretty cute funny strange simple complex colorful plain striped spotted "
    "fluffy wooden metal plastic glass stone paper cotton leather sunny cloudy rainy snowy foggy "
    "windy dark bright blurry sharp detailed realistic abstract cartoon vintage futuristic cozy "
    "elegant rustic crowded peaceful dramatic mysterious famous"
)

VERBS = _words(
    "sitting standing walking running jumping flying swimming sleeping eating drinking reading "
    "writing playing singing dancing holding carrying riding driving looking watching smiling "
    "talking cooking painting climbing falling floating shining growing waiting resting hiding "
    "crossing leaning pointing throwing catching pulling pushing opening closing building "
    "cleaning wearing laughing crying thinking working"
)

PREPOSITIONS = _words("on in under above below near beside behind between inside outside across along over through")

NUMBERS = _words("zero one two three four five six seven eight nine ten eleven twelve twenty hundred")

STYLES = _words(
    "photo photograph picture image drawing sketch painting illustration render rendering "
    "watercolor oil pencil digital art poster portrait landscape close-up view scene shot"
)

COMMON = _words(
    "the of and to a in is it you that he was for on are with as his they be at one have this from "
    "or had by hot word but what some we can out other were all there when up use your how said an "
    "each she which do their time if will way about many then them write would like so these her "
    "long make thing see him two has look more day could go come did number sound no most people "
    "my over know water than call first who may down side been now find any new work part take get "
    "place made live where after back little only round man year came show every good me give our "
    "under name very through just form sentence great think say help low line differ turn cause "
    "much mean before move right boy old too same tell does set three want air well also play small "
    "end put home read hand port large spell add even land here must big high such follow act why "
    "ask men change went light kind off need house picture try us again animal point mother world "
    "near build self earth father head stand own page should country found answer school grow study "
    "still learn plant cover food sun four between state keep eye never last let thought city tree "
    "cross farm hard start might story saw far sea draw left late run don't while press close night "
    "real life few north open seem together next white children begin got walk example ease paper "
    "group always music those both mark often letter until mile river car feet care second book "
    "carry took science eat room friend began idea fish mountain stop once base hear horse cut sure "
    "watch color face wood main enough plain girl usual young ready above ever red list though feel "
    "talk bird soon body dog family direct pose leave song measure door product black short numeral "
    "class wind question happen complete ship area half rock order fire south problem piece told "
    "knew pass since top whole king space heard best hour better true during hundred five remember "
    "step early hold west ground interest reach fast verb sing listen six table travel less morning "
    "ten simple several vowel toward war lay against pattern slow center love person money serve "
    "appear road map rain rule govern pull cold notice voice unit power town fine certain fly fall "
    "lead cry dark machine note wait plan figure star box noun field rest correct able pound done "
    "beauty drive stood contain front teach week final gave green oh quick develop ocean warm free "
    "minute strong special mind behind clear tail produce fact street inch multiply nothing course "
    "stay wheel full force blue object decide surface deep moon island foot system busy test record "
    "boat common gold possible plane stead dry wonder laugh thousand ago ran check game shape equate "
    "miss brought heat snow tire bring yes distant fill east paint language among grand ball yet "
    "wave drop heart present heavy dance engine position arm wide sail material size vary settle "
    "speak weight general ice matter circle pair include divide syllable felt perhaps pick sudden "
    "count square reason length represent art subject region energy hunt probable bed brother egg "
    "ride cell believe fraction forest sit race window store summer train sleep prove lone leg "
    "exercise wall catch mount wish board winter sat written wild instrument kept glass grass cow "
    "job edge sign visit past soft fun bright gas weather month million bear finish happy hope "
    "flower clothe strange gone jump baby eight village meet root buy raise solve metal whether "
    "push seven paragraph third shall held hair describe cook floor either result burn hill safe "
    "cat century consider type law bit coast copy phrase silent tall sand soil roll temperature "
    "finger industry value fight lie beat excite natural view sense ear else quite broke case "
    "middle kite son lake moment scale loud spring observe child straight consonant nation "
    "dictionary milk speed method organ pay age section dress cloud surprise quiet stone tiny climb "
    "cool design poor lot experiment bottom key iron single stick flat twenty skin smile crease "
    "hole trade melody trip office receive row mouth exact symbol die least trouble shout except "
    "wrote seed tone join suggest clean break lady yard rise bad blow oil blood touch grew cent mix "
    "team wire cost lost brown wear garden equal sent choose fell fit flow fair bank collect save "
    "control decimal gentle woman captain practice separate difficult doctor please protect noon "
    "whose locate ring character insect caught period indicate radio spoke atom human history effect "
    "electric expect crop modern element hit student corner party supply bone rail imagine provide "
    "agree thus capital won't chair danger fruit rich thick soldier process operate guess necessary "
    "sharp wing create neighbor wash bat rather crowd corn compare poem string bell depend meat rub "
    "tube famous dollar stream fear sight thin triangle planet hurry chief colony clock mine tie "
    "enter major fresh search send yellow gum allow print dead spot desert suit current lift rose "
    "continue block chart hat sell success company subtract event particular deal swim term "
    "opposite wife shoe shoulder spread arrange camp invent cotton born determine quart nine truck "
    "noise level chance gather shop stretch throw shine property column molecule select wrong gray "
    "repeat require broad prepare salt nose plural anger claim continent oxygen sugar death pretty "
    "skill women season solution magnet silver thank branch match suffix especially fig afraid huge "
    "sister steel discuss forward similar guide experience score apple bought led pitch coat mass "
    "card band rope slip win dream evening condition feed tool total basic smell valley nor double "
    "seat arrive master track parent shore division sheet substance favor connect post spend chord "
    "fat glad original share station dad bread charge proper bar offer segment slow duck instant "
    "market degree populate chick dear enemy reply drink occur support speech nature range steam "
    "motion path liquid log meant quotient teeth shell neck"
)

PROSE = """\
system
You are a helpful assistant.
user
assistant
The quick brown fox jumps over the lazy dog. A picture is worth a thousand words.
This image shows a scene with several objects. The main subject is in the center of the frame,
and the background is slightly blurred. There are no people visible in the picture.
Describe the image in detail. List every object you can see and count how many there are.
Answer with a JSON object that follows the schema. Do not add any other text.
What color is the car? How many animals are in the picture? Is it day or night?
The photograph was taken outdoors on a sunny afternoon, and long shadows fall across the grass.
Inside the room, a lamp stands next to a sofa, and a painting hangs on the wall above it.
Yes, no, maybe, true, false, null, none, unknown, other, something, nothing, everything.
The answer is correct. The answer is wrong. The caption matches the image. It does not match.
"""


def _json_samples(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        objects = [
            {"name": rng.choice(OBJECTS), "color": rng.choice(COLORS), "count": rng.randint(0, 12)}
            for _ in range(rng.randint(1, 3))
        ]
        doc = {
            "caption": f"a {rng.choice(ADJECTIVES)} {rng.choice(OBJECTS)} {rng.choice(VERBS)} "
            f"{rng.choice(PREPOSITIONS)} the {rng.choice(PLACES)}",
            "objects": objects,
            "style": rng.choice(STYLES),
            "score": round(rng.random(), 3),
            "is_photo": rng.random() < 0.5,
            "text": None,
        }
        out.append(json.dumps(doc, indent=2 if rng.random() < 0.5 else None))
    return out


def _sentences(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        subject = f"{rng.choice(['A', 'The', 'One', 'This'])} {rng.choice(ADJECTIVES)} {rng.choice(COLORS)}"
        thing = rng.choice(OBJECTS)
        tail = f"{rng.choice(PREPOSITIONS)} a {rng.choice(ADJECTIVES)} {rng.choice(OBJECTS)}"
        place = f"in the {rng.choice(PLACES)}"
        kind = f"{rng.choice(['a', 'an old', 'a new'])} {rng.choice(STYLES)} of {rng.choice(NUMBERS)} {thing}s"
        out.append(
            rng.choice(
                [
                    f"{subject} {thing} is {rng.choice(VERBS)} {tail} {place}.",
                    f"{kind.capitalize()}, {rng.choice(ADJECTIVES)} and {rng.choice(ADJECTIVES)}.",
                    f"There are {rng.choice(NUMBERS)} {thing}s {tail}, {rng.choice(VERBS)} {place}.",
                    f"{subject} {thing}, {rng.choice(STYLES)}, {rng.choice(ADJECTIVES)} lighting",
                ]
            )
        )
    return out


@cache
def corpus() -> tuple[str, ...]:
    """The training text, one document per item (same on every call and machine)."""
    rng = random.Random(20240601)
    words = [*COMMON, *COLORS, *OBJECTS, *PLACES, *ADJECTIVES, *VERBS, *PREPOSITIONS, *NUMBERS, *STYLES]
    docs = [*PROSE.splitlines(), " ".join(words), " ".join(w.capitalize() for w in words)]
    docs += _sentences(rng, 3000)
    docs += [" ".join(rng.choice(COMMON) for _ in range(rng.randint(6, 16))).capitalize() + "." for _ in range(3000)]
    docs += _json_samples(rng, 600)
    docs += [" ".join(str(rng.randint(0, 10_000)) for _ in range(20)) for _ in range(20)]
    return tuple(docs)
