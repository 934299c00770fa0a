# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Parking meters and traffic collisions per council district
#
# How many parking meters, and how many 2017 traffic collisions, lie in each council district (the current,
# 2021 lines)? Two city datasets, two ways in:
#
# - the **parking meters** have coordinates: `client.tag()` adds the district of each point;
# - the **police collisions** have only an address (a hundred block or a crossing): `client.geocode()` finds the
#   place and tags it in the same call.
#
# It talks to the service at `ENRICH_SERVICE_URL` (the compose file's Jupyter has it); without one it starts
# a service of its own on the data. The data is read where `ENRICH_DATA_DIR` says (default `/work/shared/data`).
# The client is described in `docs/cli.md`, the geocoder's rules in `docs/geocode.md`.

# %%
import atexit
import os
from pathlib import Path

import numpy as np
import pandas as pd

from enrich_service.client import EnrichClient, LocalService

DATA = Path(os.environ.get("ENRICH_DATA_DIR", "/work/shared/data"))
URL = os.environ.get("ENRICH_SERVICE_URL")
if not URL:  # no service to talk to: a local one on the same files, stopped when the kernel stops
    local = LocalService({"ENRICH_BOUNDARY_DIR": str(DATA / "boundaries"),
                          "ENRICH_REFERENCE_DIR": str(DATA / "address")}).start()
    atexit.register(local.stop)
    URL = local.url
client = EnrichClient(URL, retries=4)

# %% [markdown]
# ## Parking meters: points
#
# The file has one row per meter *configuration* (a pole with a Sunday mode has two rows): a meter is a pole.
# A few poles carry placeholder coordinates (32.0, -117.0; 90, 180) or a longitude that lost its sign:
# the service answers those rows with no district rather than guess.

# %%
meters = pd.read_csv(DATA / "points" / "treas_parking_meters_loc_datasd.csv", dtype={"pole": str})
poles = meters.drop_duplicates("pole")
poles = client.tag(poles, lon="lng", lat="lat", layers=["council_district"])
print(f"{len(meters):,} rows, {len(poles):,} meters (poles), tagged by {URL} with the council districts of "
      f"{poles.attrs['enrich_layers']['council_district']['version']}")
poles[["pole", "sub_area", "lat", "lng", "council_district"]].head()

# %% [markdown]
# ## Traffic collisions: addresses
#
# Police records keep the address in pieces: `street_no` is a hundred block ("5500"), 0 at a crossing, where the
# cross street says where; blank fields are a single space. Put together as the geocoder reads them ("5500 block
# of VALERIO TRAIL", "IMPERIAL AVENUE & VIEWCREST DR"; the DAG does the same, `dags/enrich_pipeline/geocode.py`).

# %%
collisions = pd.read_csv(DATA / "datasets" / "pd_collisions_2017_datasd.csv", dtype=str)


def joined(columns: list[str]) -> pd.Series:
    """The non-blank pieces of each row, space-separated."""
    parts = collisions[columns].fillna("").apply(lambda col: col.str.strip())
    return parts.agg(lambda row: " ".join(t for t in row if t), axis=1)


street = joined(["street_dir", "street_name", "street_type"])
cross = joined(["cross_st_dir", "cross_st_name", "cross_st_type"])
number = collisions["street_no"].fillna("").str.strip().replace("0", "")
collisions["address"] = np.select(
    [street == "", (number == "") & (cross != ""), number.str.isdigit(), number != ""],
    ["", street + " & " + cross, number + " block of " + street, number + " " + street],
    default=street)

# Today's lines, as for the meters. `date="date_time"` would tag each collision with the lines in force on its day
# (the 2011 districts, for 2017), adding a `council_district_version` column.
places = client.geocode(collisions, address="address", layers=["council_district"])
places[["report_id", "address", "match", "score", "matched_address", "council_district",
        "council_district_rule"]].head()

# %% [markdown]
# ## Per district

# %%
per_district = pd.DataFrame({
    "parking meters": poles["council_district"].value_counts(),
    "traffic collisions": places["council_district"].value_counts(),
}).fillna(0).astype(int)
per_district = per_district.loc[sorted(per_district.index, key=int)]
per_district.loc["no district"] = [poles["council_district"].isna().sum(), places["council_district"].isna().sum()]
per_district

# %%
ax = per_district.drop("no district").plot.bar(subplots=True, layout=(1, 2), figsize=(10, 3.5), legend=False,
                                                rot=0, xlabel="council district")

# %% [markdown]
# ## Why some rows have no district
#
# A meter with no district has no usable coordinates. A collision gets a district only when every place its
# address allows lies in one district (`docs/geocode.md`, "How sure a tag is"): a hundred block or a crossing the
# reference holds is placed and tagged; a street the reference holds only in part ("6400 block of EL CAJON BLVD",
# where it lacks that number) is placed at the nearest known part (`match` = `street`) but left untagged
# (`ambiguous`); a street it lacks entirely is not placed (`none`).

# %%
levels = pd.crosstab(places["match"], places["council_district"].notna().map({True: "tagged", False: "no district"}),
                     margins=True, margins_name="all")
print(f"Of {len(places):,} collisions, {places['match'].ne('none').mean():.1%} were placed and "
      f"{places['council_district'].notna().mean():.1%} got a district; "
      f"{poles['council_district'].notna().mean():.1%} of the {len(poles):,} meters did.")
levels
