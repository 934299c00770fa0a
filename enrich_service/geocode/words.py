"""The vocabulary of addresses: street types, directionals, ordinals, unit designators and name abbreviations.

Each table maps every spelling seen in city data (USPS C1/C2 forms, the spelled-out words of the address points,
the city's own abbreviations of the street centerlines: AV, BL, WY, TR, CR, PY, RW ...) to one canonical form, so
"Fifth Avenue", "5TH AVE" and "5TH AV" all become `5TH AVE`.
"""

from __future__ import annotations

# Street types -> USPS standard abbreviation.
_TYPES = {
    "ALY": "ALLEY ALLY ALY", "AVE": "AVENUE AVE AV AVEN AVN AVNUE", "BLVD": "BOULEVARD BLVD BL BOULV BOUL",
    "BND": "BEND BND", "BRG": "BRIDGE BRG", "BYP": "BYPASS BYP", "CSWY": "CAUSEWAY CSWY", "CTR": "CENTER CTR",
    "CIR": "CIRCLE CIR CR CIRC", "CT": "COURT CT CRT", "CTS": "COURTS CTS", "CV": "COVE CV",
    "CRES": "CRESCENT CRES", "XING": "CROSSING XING", "DR": "DRIVE DR DRV", "EXPY": "EXPRESSWAY EXPY EXPWY",
    "FWY": "FREEWAY FWY", "GDNS": "GARDENS GDNS", "GLN": "GLEN GLN", "GRN": "GREEN GRN", "HTS": "HEIGHTS HTS",
    "HWY": "HIGHWAY HWY HIWAY", "HL": "HILL HL", "HOLW": "HOLLOW HOLW", "KNL": "KNOLL KNL", "LNDG": "LANDING LNDG",
    "LN": "LANE LN", "LOOP": "LOOP", "MALL": "MALL", "PARK": "PARK PRK", "PKWY": "PARKWAY PKWY PY PKY",
    "PASS": "PASS", "PATH": "PATH", "PL": "PLACE PL", "PLZ": "PLAZA PLZ", "PT": "POINT PT", "RD": "ROAD RD",
    "ROW": "ROW RW", "RUN": "RUN", "SQ": "SQUARE SQ", "ST": "STREET ST STR", "TER": "TERRACE TER TR TERR",
    "TRL": "TRAIL TRL TL", "VW": "VIEW VW", "VIS": "VISTA VIS", "WALK": "WALK WALKWAY WLK", "WAY": "WAY WY",
}
STREET_TYPES = {spelling: canon for canon, spellings in _TYPES.items() for spelling in spellings.split()}

DIRECTIONS = {
    "N": "N", "NORTH": "N", "S": "S", "SOUTH": "S", "E": "E", "EAST": "E", "W": "W", "WEST": "W",
    "NE": "NE", "NORTHEAST": "NE", "NW": "NW", "NORTHWEST": "NW", "SE": "SE", "SOUTHEAST": "SE",
    "SW": "SW", "SOUTHWEST": "SW",
}

_UNITS = "APT APARTMENT UNIT STE SUITE SPC SPACE BLDG BUILDING FL FLOOR RM ROOM LOT TRLR DEPT OFC OFFICE PH # NO"
UNIT_DESIGNATORS = frozenset(_UNITS.split())

_ORDINAL_ONES = ["", "FIRST", "SECOND", "THIRD", "FOURTH", "FIFTH", "SIXTH", "SEVENTH", "EIGHTH", "NINTH"]
_TEENS = ["TENTH", "ELEVENTH", "TWELFTH", "THIRTEENTH", "FOURTEENTH", "FIFTEENTH", "SIXTEENTH", "SEVENTEENTH",
          "EIGHTEENTH", "NINETEENTH"]
_TENS = ["", "", "TWENTY", "THIRTY", "FORTY", "FIFTY", "SIXTY", "SEVENTY", "EIGHTY", "NINETY"]
_ORDINAL_TENS = ["", "", "TWENTIETH", "THIRTIETH", "FORTIETH", "FIFTIETH", "SIXTIETH", "SEVENTIETH",
                 "EIGHTIETH", "NINETIETH"]


def _suffix(n: int) -> str:
    return "TH" if 11 <= n % 100 <= 13 else {1: "ST", 2: "ND", 3: "RD"}.get(n % 10, "TH")


def _ordinal_words() -> dict[str, str]:
    """'FIFTH' -> '5TH', 'TWENTYFIRST' -> '21ST' (hyphens and spaces are removed before lookup), 1..99."""
    out = {}
    for n in range(1, 100):
        tens, ones = divmod(n, 10)
        if n < 10:
            word = _ORDINAL_ONES[n]
        elif n < 20:
            word = _TEENS[n - 10]
        elif ones == 0:
            word = _ORDINAL_TENS[tens]
        else:
            word = _TENS[tens] + _ORDINAL_ONES[ones]
        out[word] = f"{n}{_suffix(n)}"
    return out


ORDINALS = _ordinal_words()
# Bare "5" in a street name means "5TH" ("5 Ave"); numbers written without their suffix.
NUMBER_ORDINALS = {str(n): f"{n}{_suffix(n)}" for n in range(1, 100)}
TENS_WORDS = frozenset(_TENS[2:])  # "TWENTY FIRST": joined with the next word before the ordinal lookup

# Words inside street names, written the way the city's centerlines write them.
NAME_WORDS = {
    "MOUNT": "MT", "MOUNTAIN": "MTN", "SAINT": "ST", "SANTA": "SANTA", "CAMINITO": "CTE", "CAMINO": "CAM",
    "AVENIDA": "AVNDA", "AVD": "AVNDA", "AVDA": "AVNDA", "FT": "FORT", "PT": "POINT", "PLAZA": "PLZ",
    "CALLEJON": "CLLJN", "CORTE": "CTE", "PASEO": "PASEO", "DOCTOR": "DR", "MARTIN LUTHER KING": "MLK",
}

# Words that end the street part: the state, and the city names of the reference.
STATES = frozenset({"CA", "CALIF", "CALIFORNIA"})

# What city records put where an address should be: answered "not an address", never guessed at.
PLACEHOLDERS = frozenset({"NA", "N A", "NONE", "NULL", "UNKNOWN", "TBD", "NOT AVAILABLE", "SEE ATTACHED", "VARIOUS",
                          "CITYWIDE", "CITY WIDE", "NO ADDRESS", "ADDRESS", "X", "XX", "XXX"})

# Cities of the county that are not San Diego (and unincorporated places with a mailing-city name): an address that
# names one is another city's, and the San Diego reference and boundaries say nothing about it ("other_city").
OTHER_CITIES = frozenset({
    "CARLSBAD", "CHULA VISTA", "CORONADO", "DEL MAR", "EL CAJON", "ENCINITAS", "ESCONDIDO", "IMPERIAL BEACH",
    "LA MESA", "LEMON GROVE", "NATIONAL CITY", "OCEANSIDE", "POWAY", "SAN MARCOS", "SANTEE", "SOLANA BEACH", "VISTA",
    "BONITA", "SPRING VALLEY", "LAKESIDE", "ALPINE", "RAMONA", "FALLBROOK", "RANCHO SANTA FE", "JAMUL",
    "BORREGO SPRINGS", "JULIAN", "VALLEY CENTER", "CARDIFF", "CARDIFF BY THE SEA", "LA PRESA", "CASA DE ORO",
    "TIJUANA", "TECATE", "LOS ANGELES", "RIVERSIDE", "TEMECULA", "IRVINE",
})
# "1000 BLOCK OF X", "1000 BLK X": the hundred block, as police and code enforcement records write it.
BLOCK_WORDS = frozenset({"BLOCK", "BLK", "BLCK"})

# San Diego itself, its community planning areas (cmty_plan_datasd) and the community names residents write as a
# city ("Hillcrest", "Clairemont"): a `city` field naming one is a San Diego address. Spelled as normalized (upper
# case, accents and punctuation gone, "Mid-City:City Heights" as its parts).
SAN_DIEGO_PLACES = frozenset({
    "SAN DIEGO", "SD", "CITY OF SAN DIEGO", "S D", "SAN DIEGO CITY",
    # planning areas
    "BALBOA PARK", "BARRIO LOGAN", "BLACK MOUNTAIN RANCH", "CARMEL MOUNTAIN RANCH", "CARMEL VALLEY",
    "CLAIREMONT MESA", "COLLEGE AREA", "DEL MAR MESA", "DOWNTOWN", "EAST ELLIOTT", "ENCANTO", "GOLDEN HILL",
    "GREATER GOLDEN HILL", "NORTH PARK", "GREATER NORTH PARK", "KEARNY MESA", "LA JOLLA", "LINDA VISTA",
    "LOS PENASQUITOS CANYON", "MID CITY", "CITY HEIGHTS", "KENSINGTON", "TALMADGE", "NORMAL HEIGHTS",
    "MIDWAY", "MIDWAY PACIFIC HIGHWAY", "MIRA MESA", "MIRAMAR RANCH NORTH", "MISSION BAY PARK", "MISSION BEACH",
    "MISSION VALLEY", "NAVAJO", "OCEAN BEACH", "OLD TOWN", "OLD TOWN SAN DIEGO", "OTAY MESA", "NESTOR",
    "OTAY MESA NESTOR", "PACIFIC BEACH", "PACIFIC HIGHLANDS RANCH", "PENINSULA", "RANCHO BERNARDO",
    "RANCHO ENCANTADA", "RANCHO PENASQUITOS", "SABRE SPRINGS", "SAN PASQUAL", "SAN YSIDRO", "SCRIPPS RANCH",
    "SCRIPPS MIRAMAR RANCH", "SERRA MESA", "SKYLINE", "PARADISE HILLS", "SKYLINE PARADISE HILLS",
    "SOUTHEASTERN SAN DIEGO", "TIERRASANTA", "TIJUANA RIVER VALLEY", "TORREY HIGHLANDS", "TORREY HILLS",
    "TORREY PINES", "UNIVERSITY CITY", "UPTOWN",
    # communities and neighbourhoods inside them
    "CLAIREMONT", "POINT LOMA", "PT LOMA", "HILLCREST", "MISSION HILLS", "BANKERS HILL", "UNIVERSITY HEIGHTS",
    "LA JOLLA VILLAGE", "BAY PARK", "BAY HO", "MORENA", "SORRENTO VALLEY", "SORRENTO MESA", "MIRAMAR", "ALLIED GARDENS", "DEL CERRO", "SAN CARLOS", "GRANTVILLE", "ROLANDO", "OAK PARK", "WEBSTER",
    "CHOLLAS VIEW", "LOGAN HEIGHTS", "SHERMAN HEIGHTS", "SOUTH PARK", "EAST VILLAGE", "GASLAMP", "LITTLE ITALY",
    "LINCOLN PARK", "VALENCIA PARK", "EMERALD HILLS", "BAY TERRACES", "EGGER HIGHLANDS", "OCEAN CREST", "PALM CITY", "OTAY", "SUNSET CLIFFS", "LOMA PORTAL",
    "ROSEVILLE", "LA PLAYA", "POINT LOMA HEIGHTS", "MIDWAY DISTRICT", "4S RANCH", "BLACK MOUNTAIN", "PENASQUITOS", "MORENA DISTRICT",
    "NORTH CLAIREMONT", "UTC", "LA JOLLA SHORES",
    "BIRDLAND", "COLLEGE",
    "DEL MAR HEIGHTS", "OTAY MESA WEST", "OTAY MESA EAST", "NORTH CITY",
})
