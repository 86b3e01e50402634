"""The leadership assessment's item set: 18 statements answered on an integer 1-6 scale.

Six statements per dimension of the taxonomy (공유, 상호작용, 성장); two per dimension
are reverse-scored (``7 - x``) before averaging. ``ITEM_IDS`` is the column order of
every answer matrix, so the classifier's features and stored artifacts depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ANSWER_MAX", "ANSWER_MIN", "ITEMS", "ITEM_IDS", "Item"]

ANSWER_MIN = 1
ANSWER_MAX = 6


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    dimension: str
    text: str
    reverse: bool = False


ITEMS: tuple[Item, ...] = (
    Item("S1", "공유", "나는 팀의 목표와 방향을 구성원들과 분명하게 공유한다."),
    Item("S2", "공유", "중요한 결정을 내리기 전에 구성원들의 의견을 구한다."),
    Item("S3", "공유", "팀의 목표는 내가 정하고 구성원들에게는 결과만 알린다.", reverse=True),
    Item("S4", "공유", "구성원들이 업무 계획을 세우는 과정에 직접 참여하게 한다."),
    Item("S5", "공유", "팀의 성과와 진행 상황을 구성원 모두가 알 수 있게 공개한다."),
    Item("S6", "공유", "업무 정보는 꼭 필요한 사람에게만 알려 주는 편이다.", reverse=True),
    Item("I1", "상호작용", "구성원들과 업무 외의 이야기도 자주 나눈다."),
    Item("I2", "상호작용", "구성원의 이야기를 끝까지 귀 기울여 듣는다."),
    Item("I3", "상호작용", "구성원들과의 대화는 주로 업무 지시에 그친다.", reverse=True),
    Item("I4", "상호작용", "구성원이 어려움을 겪을 때 먼저 다가가 이야기를 나눈다."),
    Item("I5", "상호작용", "구성원들이 나에게 편하게 의견을 말할 수 있는 분위기를 만든다."),
    Item("I6", "상호작용", "나는 구성원들과 정서적으로 거리를 두는 편이다.", reverse=True),
    Item("G1", "성장", "구성원 개개인의 강점과 보완할 점을 파악하고 있다."),
    Item("G2", "성장", "구성원에게 성장에 도움이 되는 구체적인 피드백을 준다."),
    Item("G3", "성장", "구성원의 경력 목표에 대해 함께 이야기한다."),
    Item("G4", "성장", "구성원의 역량 개발보다 당장의 성과가 더 중요하다.", reverse=True),
    Item("G5", "성장", "구성원에게 새로운 역할이나 도전적인 과제를 맡을 기회를 준다."),
    Item("G6", "성장", "구성원의 교육과 학습은 각자 알아서 할 일이라고 생각한다.", reverse=True),
)
ITEM_IDS: tuple[str, ...] = tuple(item.id for item in ITEMS)
